"""A worker's counters (carbotui/proxy/stats.py: Stats, BackendCounters), compiled by mypyc
(setup.py) and run as Python with CARBOTUI_PURE=1: both must count the same."""
import asyncio
import bisect
import math
import os
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from carbotui.backends import worker_sockets as wire
from carbotui.services import nodes
from carbotui.proxy import stats
from carbotui.proxy.stats import BackendCounters, Stats

BOUNDS_MS = [b * 1000 for b in wire.CONNECT_BUCKETS]


def times_around_the_bounds() -> list[float]:
    out = [-1.0, 0.0, 1e-9, math.inf, -math.inf, math.nan, 1e12]
    for b in BOUNDS_MS:
        out += [b, math.nextafter(b, -math.inf), math.nextafter(b, math.inf), b / 2]
    return out


def test_a_connect_time_lands_in_the_histogram_bucket_bisect_gives():
    for ms in times_around_the_bounds():
        c = BackendCounters()
        c.connected(ms)
        expected = [0] * (len(BOUNDS_MS) + 1)
        expected[bisect.bisect_left(BOUNDS_MS, ms)] = 1
        assert c.connect_counts == expected, ms


def test_connect_times_average_and_sum_as_before():
    c = BackendCounters()
    for ms in (4.0, 9.0, 120.0, 30000.0):
        c.connected(ms)
    assert c.sessions == 4
    assert c.connect_ms == 0.8 * (0.8 * (0.8 * 4.0 + 0.2 * 9.0) + 0.2 * 120.0) + 0.2 * 30000.0
    assert c.connect_sum_ms == 4.0 + 9.0 + 120.0 + 30000.0
    # 4 ms: <= 5 ms; 9 ms: <= 10 ms; 120 ms: <= 250 ms; 30 s: above the last bound
    assert c.connect_counts == [1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert len(c.connect_counts) == len(wire.CONNECT_BUCKETS) + 1


def test_each_mailbox_server_has_one_set_of_counters():
    s = Stats()
    a = s.backend("mbox1")
    a.active += 1
    assert s.backend("mbox1") is a and s.backend("mbox1").active == 1
    b = s.backend("mbox2")
    assert b is not a and b == BackendCounters()
    assert list(s.backends) == ["mbox1", "mbox2"]
    # separate histograms, not one list shared by every server
    a.connected(1.0)
    assert b.connect_counts == [0] * (len(wire.CONNECT_BUCKETS) + 1)


def test_the_counters_count_missing_keys_from_zero():
    s = Stats()
    for counter in (s.connections, s.logins_ok, s.logins_failed, s.logins_temp, s.throttled,
                    s.web_requests, s.web_responses, s.sessions_ended):
        assert isinstance(counter, Counter) and counter["never"] == 0
    s.connections["imap"] += 1
    s.sessions_ended["imap", "logout"] += 1
    s.rejected_busy += 1
    s.proxy_refused += 2
    assert s.connections == {"imap": 1} and s.sessions_ended == {("imap", "logout"): 1}
    assert (s.rejected_busy, s.proxy_refused) == (1, 2)
    # every Stats its own counters
    assert Stats().connections == {}


def test_the_dataclasses_keep_their_fields_and_repr():
    s = Stats(started=5.0)
    assert repr(s).startswith("Stats(started=5.0, connections=Counter(), logins_ok=Counter()")
    assert repr(BackendCounters()) == (
        "BackendCounters(active=0, sessions=0, errors=0, connect_ms=0.0, "
        f"connect_counts={[0] * (len(wire.CONNECT_BUCKETS) + 1)}, connect_sum_ms=0.0)")
    assert Stats(started=5.0) == s and BackendCounters(errors=1) != BackendCounters()


def test_the_snapshot_nests_tuple_keyed_counters():
    assert stats._nested(Counter({("https", "mbox2", "2xx"): 2, ("https", "-", "4xx"): 1})) == \
        {"https": {"mbox2": {"2xx": 2}, "-": {"4xx": 1}}}


def fleet_services(**parts):
    """What fleet_summary and publish_forever read of a SessionServices."""
    s = Stats(started=7.0)
    s.logins_ok.update({"imap": 2, "pop3": 1})
    s.logins_failed["imap"] += 4
    fields = dict(stats=s, live=SimpleNamespace(version="v3", mail_mode="https"),
                  node_id="node1", name="proxy_01", sessions={1: None, 2: None}, cache="memcached",
                  settings=SimpleNamespace(listen={"imap": ["127.0.0.1:143"],
                                                   "pop3": ["127.0.0.1:110", "[::1]:110"]}))
    return SimpleNamespace(**{**fields, **parts})


def test_the_fleet_summary_counts_the_workers_sessions_and_logins():
    before = time.time()
    summary = stats.fleet_summary(fleet_services())
    assert before <= summary.pop("time") <= time.time()
    assert summary == {"node": "node1", "worker": "proxy_01", "pid": os.getpid(),
                       "started": 7.0, "sessions": 2, "logins_ok": 3, "logins_failed": 4,
                       "config": "v3", "mail_mode": "https",
                       "listen": ["127.0.0.1:110", "127.0.0.1:143", "[::1]:110"]}


def test_publishing_goes_on_after_a_failure(monkeypatch):
    calls = []

    async def publish(cache, node, worker, summary):
        calls.append((cache, node, worker, summary["sessions"]))
        if len(calls) == 1:
            raise OSError("memcached went away")        # the next round publishes again
        raise asyncio.CancelledError                     # ends the test's loop

    monkeypatch.setattr(nodes, "publish", publish)
    monkeypatch.setattr(nodes, "PUBLISH_EVERY", 0)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(stats.publish_forever(fleet_services()))
    assert calls == [("memcached", "node1", "proxy_01", 2)] * 2
