"""The node's Prometheus exporter (carbotui/admin/metrics.py) fed fixed worker snapshots:
counters summed over workers and kept across a worker's restart, the histogram, the
certificates, no user or IP in any label, and the HTTP endpoint."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbotui.admin import metrics
from carbotui.backends import worker_sockets as wire
from carbotui.core import certs
from carbotui.core.settings import Endpoint

ACCOUNT, CLIENT_IP = "secret.user@demo.test", "198.51.100.77"


def snapshot(worker: str, pid: int, *, ok: int = 1, failed: int = 0, started: float = 1000.0,
             web_2xx: int = 0, connect=(0,) * 12, ldap_error: str = "") -> wire.WorkerSnapshot:
    return wire.WorkerSnapshot(
        worker=worker, pid=pid, time=2000.0, started=started, draining=False,
        connections={"imaps": ok + failed},
        logins=wire.Logins(ok={"imap": ok}, failed={"imap": failed} if failed else {},
                           temporary={}),
        throttled={"ip": 2}, rejected_busy=0, sockets=4, proxy_refused=0,
        cache=wire.CacheStats(hits=5, misses=1, ldap_lookups=1, memcached_available=True),
        ldap_searches=3,
        backends={"mbox1": wire.BackendStats(active=1, sessions=ok, errors=1, connect_ms=3.0)},
        maintenance=[],
        web=wire.WebStats(requests={"https": web_2xx}, upstreams=[wire.UpstreamStats(
            server="mbox1", port=8080, kind="http", healthy=True, active=0,
            requests=web_2xx, maintenance=False, errors=0, idle=0)]),
        config=wire.ConfigStats(version="v1", applied_at=1.0, mail_mode="https",
                                ldap_error=ldap_error),
        sessions=[wire.Session(1, worker, "imaps", CLIENT_IP, 50000, ACCOUNT, "mbox1",
                               "proxy", 1500.0, 10, 20)],
        metrics=wire.MetricStats(
            blocked=1, web_responses={"https": {"mbox1": {"2xx": web_2xx}, "-": {"4xx": 1}}},
            connect={"mbox1": wire.ConnectTimes(list(connect), 0.25)},
            sessions_ended={"imaps": {"logout": ok}}),
    )


class Feed:
    """What the workers' sockets say, changed by the test between scrapes."""

    def __init__(self, *snaps):
        self.snaps = {s.worker: s for s in snaps}

    def __call__(self, run_dir):
        return dict(self.snaps)


def settings(tmp_path, **over):
    base = dict(run_dir=tmp_path / "run", tls_certificate=tmp_path / "none.crt",
                metrics_listen=Endpoint("127.0.0.1", 0))
    base.update(over)
    return SimpleNamespace(**base)


def scrape(collector) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    text = metrics.render(collector).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out, text


def value(samples: dict, metric: str, **labels) -> float:
    return samples[metric, frozenset(labels.items())]


def test_logins_are_summed_over_the_workers(tmp_path):
    feed = Feed(snapshot("proxy_00", 10, ok=3, failed=1), snapshot("proxy_01", 11, ok=4))
    samples, _ = scrape(metrics.NodeCollector(settings(tmp_path), read=feed))
    assert value(samples, "carbotui_logins_total", protocol="imap", result="ok") == 7
    assert value(samples, "carbotui_logins_total", protocol="imap", result="failed") == 1
    assert value(samples, "carbotui_sessions", protocol="imaps", state="proxy") == 2
    assert value(samples, "carbotui_backend_sessions_active", server="mbox1") == 2
    assert value(samples, "carbotui_backend_errors_total", server="mbox1") == 2
    assert value(samples, "carbotui_blocked_total") == 2
    assert value(samples, "carbotui_throttled_total", limit="ip") == 4
    assert value(samples, "carbotui_route_cache_hits_total") == 10
    assert value(samples, "carbotui_memcached_up") == 1
    assert value(samples, "carbotui_ldap_up") == 1
    assert value(samples, "carbotui_mail_sessions_ended_total", protocol="imaps",
                 reason="logout") == 7
    assert value(samples, "carbotui_worker_up", worker="proxy_01") == 1


def test_web_requests_by_status_class_and_upstream(tmp_path):
    feed = Feed(snapshot("proxy_00", 10, web_2xx=5), snapshot("proxy_01", 11, web_2xx=2))
    samples, _ = scrape(metrics.NodeCollector(settings(tmp_path), read=feed))
    assert value(samples, "carbotui_web_requests_total", listener="https", status="2xx",
                 upstream="mbox1") == 7
    assert value(samples, "carbotui_web_requests_total", listener="https", status="4xx",
                 upstream="-") == 2
    assert value(samples, "carbotui_web_upstream_requests_total", server="mbox1",
                 kind="http") == 7


def test_a_restarted_worker_does_not_make_a_counter_go_down(tmp_path):
    feed = Feed(snapshot("proxy_00", 10, ok=50), snapshot("proxy_01", 11, ok=4))
    collector = metrics.NodeCollector(settings(tmp_path), read=feed)
    samples, _ = scrape(collector)
    assert value(samples, "carbotui_logins_total", protocol="imap", result="ok") == 54
    # proxy_00 restarts (new pid, new start): its counters begin again at 2
    feed.snaps["proxy_00"] = snapshot("proxy_00", 20, ok=2, started=1900.0)
    samples, _ = scrape(collector)
    assert value(samples, "carbotui_logins_total", protocol="imap", result="ok") == 56
    assert value(samples, "carbotui_worker_restarts_total", worker="proxy_00") == 1
    assert value(samples, "carbotui_worker_restarts_total", worker="proxy_01") == 0
    assert value(samples, "carbotui_worker_start_time_seconds", worker="proxy_00") == 1900
    # proxy_01 stops answering: what it counted stays, and it shows as down
    del feed.snaps["proxy_01"]
    samples, _ = scrape(collector)
    assert value(samples, "carbotui_logins_total", protocol="imap", result="ok") == 56
    assert value(samples, "carbotui_worker_up", worker="proxy_01") == 0
    assert ("carbotui_worker_start_time_seconds",
            frozenset({("worker", "proxy_01")})) not in samples


def test_ldap_down_on_one_worker_is_ldap_down(tmp_path):
    feed = Feed(snapshot("proxy_00", 10), snapshot("proxy_01", 11, ldap_error="timed out"))
    samples, _ = scrape(metrics.NodeCollector(settings(tmp_path), read=feed))
    assert value(samples, "carbotui_ldap_up") == 0


def test_the_connect_histogram_is_cumulative(tmp_path):
    counts = [1, 2, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1]         # 11 bounds, then +Inf
    feed = Feed(snapshot("proxy_00", 10, connect=counts), snapshot("proxy_01", 11,
                                                                   connect=counts))
    samples, _ = scrape(metrics.NodeCollector(settings(tmp_path), read=feed))
    bucket = "carbotui_backend_connect_seconds_bucket"
    assert value(samples, bucket, server="mbox1", le="0.005") == 2
    assert value(samples, bucket, server="mbox1", le="0.01") == 6
    assert value(samples, bucket, server="mbox1", le="0.1") == 12
    assert value(samples, bucket, server="mbox1", le="10.0") == 12
    assert value(samples, bucket, server="mbox1", le="+Inf") == 14
    assert value(samples, "carbotui_backend_connect_seconds_count", server="mbox1") == 14
    assert value(samples, "carbotui_backend_connect_seconds_sum", server="mbox1") == 0.5


def test_no_label_carries_a_user_or_an_ip(tmp_path):
    feed = Feed(snapshot("proxy_00", 10), snapshot("proxy_01", 11))
    samples, text = scrape(metrics.NodeCollector(settings(tmp_path), read=feed))
    assert ACCOUNT not in text and "secret.user" not in text and CLIENT_IP not in text
    label_names = {name for _, labels in samples for name, _ in labels}
    assert label_names <= {"worker", "protocol", "state", "result", "limit", "reason",
                           "server", "listener", "status", "upstream", "kind", "name", "le"}


def test_an_older_worker_without_metrics_still_renders(tmp_path):
    old = dataclasses.replace(snapshot("proxy_00", 10, ok=2), metrics=wire.MetricStats())
    samples, _ = scrape(metrics.NodeCollector(settings(tmp_path), read=Feed(old)))
    assert value(samples, "carbotui_logins_total", protocol="imap", result="ok") == 2
    assert value(samples, "carbotui_blocked_total") == 0


def test_certificate_expiry_per_name(tmp_path):
    ca, ca_key = certs.make_ca("test CA")
    node_cert, node_key = certs.issue(ca, ca_key, ["proxy.demo.test"], days=100)
    vhost_cert, vhost_key = certs.issue(ca, ca_key, ["mail.demo.test"], days=30)
    old_cert, _ = certs.issue(ca, ca_key, ["mail.demo.test"], days=3)
    certs.write_pair(node_cert, node_key, tmp_path / "node.crt", tmp_path / "node.key")
    vhosts = tmp_path / "run" / "vhosts"
    vhosts.mkdir(parents=True)
    # a copy left by a worker index that no longer runs (an earlier, replaced certificate)
    (vhosts / "demo.test.7.crt").write_bytes(certs.cert_to_pem(old_cert))
    (vhosts / "demo.test.0.crt").write_bytes(certs.cert_to_pem(vhost_cert))
    (vhosts / "not-a-cert.txt").write_text("x")
    (vhosts / "broken.test.0.crt").write_text("not PEM")
    collector = metrics.NodeCollector(settings(tmp_path, tls_certificate=tmp_path / "node.crt"),
                                      read=Feed(snapshot("proxy_00", 10)))
    samples, _ = scrape(collector)
    name = "carbotui_certificate_expiry_timestamp_seconds"
    assert value(samples, name, kind="default", name="proxy.demo.test") == \
        node_cert.not_valid_after_utc.timestamp()
    assert value(samples, name, kind="vhost", name="demo.test") == \
        vhost_cert.not_valid_after_utc.timestamp()
    assert not [k for k in samples if k[0] == name and ("name", "broken.test") in k[1]]
    left = value(samples, name, kind="vhost", name="demo.test") - \
        dt.datetime.now(dt.timezone.utc).timestamp()
    assert 29 * 86400 < left < 31 * 86400


def test_a_certificate_for_addresses_only_is_named_default(tmp_path):
    ca, ca_key = certs.make_ca("test CA")
    cert, key = certs.issue(ca, ca_key, ["192.0.2.10"], ips=["192.0.2.10"])
    certs.write_pair(cert, key, tmp_path / "ip.crt", tmp_path / "ip.key")
    collector = metrics.NodeCollector(settings(tmp_path, tls_certificate=tmp_path / "ip.crt"),
                                      read=Feed(snapshot("proxy_00", 10)))
    samples, text = scrape(collector)
    assert value(samples, "carbotui_certificate_expiry_timestamp_seconds", kind="default",
                 name="default") > 0
    assert "192.0.2.10" not in text


def test_the_http_endpoint(tmp_path):
    collector = metrics.NodeCollector(settings(tmp_path), read=Feed(snapshot("proxy_00", 10)))
    server = metrics.serve(settings(tmp_path), collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            assert b'carbotui_logins_total{protocol="imap",result="ok"} 1.0' in r.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_no_listener_configured_is_a_clear_exit(tmp_path, caplog):
    (tmp_path / "c.toml").write_text(
        '[node]\nname = "proxy.demo.test"\n[tls]\ncertificate = "c.crt"\n'
        'private_key = "c.key"\n[ldap]\nurl = "ldap://127.0.0.1:10389"\nbase = "o=x"\n')
    assert metrics.main(["--config", str(tmp_path / "c.toml")]) == 2
    assert "no [metrics] listen" in caplog.text


def test_fixed_series_exist_before_anything_was_counted(tmp_path):
    idle = dataclasses.replace(snapshot("proxy_00", 10, ok=0), throttled={}, sessions=[],
                               logins=wire.Logins())
    collector = metrics.NodeCollector(settings(tmp_path, listen={"imaps": (), "https": ()}),
                                      read=Feed(idle))
    samples, _ = scrape(collector)
    for limit in ("ip", "user", "ip_connections"):
        assert value(samples, "carbotui_throttled_total", limit=limit) == 0
    for result in ("ok", "failed", "temporary"):
        assert value(samples, "carbotui_logins_total", protocol="soap", result=result) == 0
    assert value(samples, "carbotui_sessions", protocol="imaps", state="proxy") == 0
    assert value(samples, "carbotui_sessions", protocol="https", state="websocket") == 0
    assert value(samples, "carbotui_connections_total", protocol="https") == 0


def test_open_sessions_come_from_the_workers_counts_not_from_sessions_sent(tmp_path):
    """The exporter asks for counts only (no session crosses the socket) and the gauge is
    exact: a real worker's stats socket with 30 sessions of four kinds and states."""
    import asyncio

    from carbotui.proxy import stats
    from tests.unit.test_worker_sockets import services_with_sessions

    run = tmp_path / "run"
    sent = []

    def read(run_dir):
        snaps = metrics.read_worker_snapshots(run_dir, query=metrics.COUNTS_ONLY)
        sent.extend(len(s.sessions) for s in snaps.values())
        return snaps

    async def main():
        services = services_with_sessions(3, 30)
        services.loop = asyncio.get_running_loop()
        server = await stats.serve(services, str(wire.stats_path(run, services.name)))
        try:
            default = metrics.NodeCollector(settings(tmp_path, listen={"imap": [], "imaps": []}))
            mine = metrics.NodeCollector(settings(tmp_path, listen={"imap": [], "imaps": []}),
                                         read=read)
            return (await asyncio.to_thread(scrape, default))[0], \
                (await asyncio.to_thread(scrape, mine))[0]
        finally:
            server.close()

    by_default, samples = asyncio.run(main())
    assert sent == [0]
    for got in (by_default, samples):
        assert value(got, "carbotui_sessions", protocol="imap", state="preauth") == 8
        assert value(got, "carbotui_sessions", protocol="imaps", state="login") == 8
        assert value(got, "carbotui_sessions", protocol="pop3", state="proxy") == 7
        assert value(got, "carbotui_sessions", protocol="https", state="http") == 7
        assert value(got, "carbotui_sessions", protocol="imap", state="proxy") == 0
