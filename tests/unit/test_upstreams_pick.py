"""UpstreamSet.pick: which mailbox server a balanced web request goes to."""
from __future__ import annotations

import time

from carbotui.backends.directory import MailServer
from carbotui.proxy.upstreams import UpstreamSet, ip_hash


def servers(*specs):
    return {name: MailServer(name, address, {"httpssl": 8443}, lookup_target=lookup)
            for name, address, lookup in specs}


def make(maintenance=()):
    s = UpstreamSet("httpssl", lambda host: host in maintenance)
    s.update(servers(("a.test", "127.0.0.1", True), ("b.test", "127.0.0.2", True),
                     ("c.test", "127.0.0.3", False), ("d.test", "127.0.0.4", True)))
    return s


def test_round_robin_over_usable_lookup_targets_only():
    s = make(maintenance={"d.test"})
    picked = [s.pick("10.0.0.1", "round-robin").name for _ in range(6)]
    assert sorted(set(picked)) == ["a", "b"]          # c: no lookup target, d: maintenance
    assert picked[0] != picked[1] and picked[::2] == [picked[0]] * 3


def test_down_and_unhealthy_upstreams_are_passed_over_and_none_when_all_are():
    s = make()
    s.upstreams["a.test"].healthy = False
    s.upstreams["b.test"].down_until = time.monotonic() + 60
    assert {s.pick("10.0.0.1", "round-robin").name for _ in range(4)} == {"d"}
    s.upstreams["d.test"].failed(60)
    assert s.pick("10.0.0.1", "round-robin") is None
    s.upstreams["b.test"].down_until = 0.0
    assert s.pick("10.0.0.1", "least-conn").name == "b"


def test_least_conn_and_ip_hash():
    s = make()
    s.upstreams["a.test"].active = 3
    s.upstreams["b.test"].active = 1
    s.upstreams["d.test"].active = 1
    s.upstreams["d.test"].requests = 5
    assert s.pick("10.0.0.1", "least-conn").name == "b"
    ups = [s.upstreams[n] for n in ("a.test", "b.test", "d.test")]
    want = ups[ip_hash("192.0.2.7") % 3]
    assert s.pick("192.0.2.7", "ip-hash") is want
    want.healthy = False                              # Zimbra: the next peer in order
    assert s.pick("192.0.2.7", "ip-hash") is ups[(ip_hash("192.0.2.7") + 1) % 3]
