"""The node's /metrics (carbotui/admin/metrics.py under supervisord's program:metrics)
against the running workers: logins made through both workers counted in one scrape, a
failed login from a non-whitelisted address, web requests by status class, a worker
restart that does not make a counter go down, and no user or IP anywhere in a scrape."""
from __future__ import annotations

import imaplib
import socket
import ssl
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from carbotui.admin.node import AuditTail, read_worker_snapshots

from .conftest import (CA, HOST, PASSWORD, PORTS, REPO, SETTINGS, WEB_PORTS, process_pid,
                       supervisorctl, tls_context, wait_for)

URL = f"http://{SETTINGS.metrics_listen}/metrics"
USERS = ("user07@demo.test", "user08@demo.test")      # odd: mbox1, even: mbox2
ATTACKER = "127.0.0.83"                                 # not in the throttle whitelist


def scrape() -> tuple[dict, str]:
    with urllib.request.urlopen(URL, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return samples, text


def value(samples: dict, metric: str, **labels) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def imap_ok(samples) -> float:
    return value(samples, "carbotui_logins_total", protocol="imap", result="ok")


def supervised_workers() -> set[str]:
    """The demo's proxy workers (not a test's private worker that shares var/run)."""
    return {line.split()[0].partition(":")[2]
            for line in supervisorctl("status", "proxy:*").splitlines() if "RUNNING" in line}


def per_worker_imap_ok() -> dict[str, int]:
    mine = supervised_workers()
    return {name: int(s.logins.ok.get("imap", 0))
            for name, s in read_worker_snapshots(REPO / "var/run").items() if name in mine}


def imaps_login(user: str) -> None:
    conn = imaplib.IMAP4_SSL(HOST, PORTS["imaps"], ssl_context=tls_context(), timeout=15)
    try:
        conn.login(user, PASSWORD)
        conn.logout()
    except BaseException:
        conn.shutdown()
        raise


def test_logins_through_two_workers_are_counted_in_one_scrape():
    workers = per_worker_imap_ok()
    assert len(workers) >= 2, f"this test needs two proxy workers, the stack has {workers}"
    for attempt in range(3):            # another engineer's login in the window: measure again
        audit = AuditTail(SETTINGS.audit_log)
        audit.read_events()                               # from now on
        before, start = scrape()[0], per_worker_imap_ok()
        made = 0
        while made < 40:
            imaps_login(USERS[made % 2])
            made += 1
            now = per_worker_imap_ok()
            if made >= 4 and all(now.get(w, 0) > n for w, n in start.items()):
                break                                     # each worker has had some
        after = scrape()[0]
        logins = [e for e in audit.read_events() if e.protocol == "imap" and e.ok]
        audit.close()
        assert all(now.get(w, 0) > n for w, n in start.items()), \
            f"{made} logins did not reach every worker: {start} -> {now}"
        if len(logins) == made:                           # only ours in the window
            assert imap_ok(after) - imap_ok(before) == made
            return
    assert imap_ok(after) - imap_ok(before) == len(logins)   # everyone's, still exact


def test_a_failed_login_from_a_throttled_address_counts_as_failed():
    before, _ = scrape()
    raw = socket.create_connection((HOST, PORTS["imaps"]), timeout=20,
                                   source_address=(ATTACKER, 0))
    ctx = ssl.create_default_context(cafile=str(CA))
    ctx.check_hostname = False
    with ctx.wrap_socket(raw) as tls:
        assert tls.recv(4096).startswith(b"* OK")
        tls.sendall(b"a LOGIN user09@demo.test wrong-password\r\n")
        reply = b""
        while b"\r\n" not in reply:
            reply += tls.recv(4096)
        assert reply.startswith(b"a NO [AUTHENTICATIONFAILED]"), reply
    after, text = wait_for(lambda: (lambda s: s if value(s[0], "carbotui_logins_total",
                                                         protocol="imap", result="failed")
                                    > value(before, "carbotui_logins_total", protocol="imap",
                                            result="failed") else None)(scrape()),
                           what="the failed login in /metrics")
    assert ATTACKER not in text and "user09" not in text


def test_no_user_or_ip_in_a_scrape():
    imaps_login(USERS[0])
    _, text = scrape()
    for secret in (*USERS, "user07", "user08", "demo-pass", HOST, "127.0.0.2", "192.0.2."):
        assert secret not in text, secret
    # what the workers hold right now (sessions: clients and accounts) stays out too
    for snap in read_worker_snapshots(REPO / "var/run").values():
        for s in snap.sessions:
            assert f'"{s.client}"' not in text and (not s.account or s.account not in text)


def https(path: str, host: str = "mail.demo.test") -> int:
    ctx = tls_context()
    with socket.create_connection((HOST, WEB_PORTS["https"]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="mail.demo.test") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                        .encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return int(data[9:12])


def web(samples, status: str, upstream: str) -> float:
    return value(samples, "carbotui_web_requests_total", listener="https", status=status,
                 upstream=upstream)


def test_web_requests_by_status_class_and_upstream():
    before, _ = scrape()
    assert https("/health") == 200
    assert https("/x", host="bad host!") == 400          # refused by the proxy itself
    assert https("/x", host="bad host!") == 400
    after, _ = scrape()
    up2xx = sum(web(after, "2xx", u) - web(before, "2xx", u) for u in ("mbox1", "mbox2"))
    assert up2xx >= 1
    assert web(after, "4xx", "-") - web(before, "4xx", "-") >= 2
    assert {labels for name, labels in after if name == "carbotui_web_requests_total"} >= {
        frozenset({("listener", "https"), ("status", "4xx"), ("upstream", "-")})}


def test_a_worker_restart_keeps_the_counters_and_is_counted():
    imaps_login(USERS[1])
    before, _ = scrape()
    worker = "proxy_01"
    started = value(before, "carbotui_worker_start_time_seconds", worker=worker)
    assert started > 0
    supervisorctl("restart", f"proxy:{worker}")
    wait_for(lambda: worker in read_worker_snapshots(REPO / "var/run"), timeout=30,
             what=f"{worker}'s stats socket after the restart")
    after, _ = scrape()
    assert imap_ok(after) >= imap_ok(before)
    for metric in ("carbotui_route_cache_hits_total", "carbotui_connections_total"):
        kept = [(labels, v) for (name, labels), v in before.items() if name == metric]
        assert all(value(after, metric, **dict(labels)) >= v for labels, v in kept), metric
    assert value(after, "carbotui_worker_restarts_total", worker=worker) == \
        value(before, "carbotui_worker_restarts_total", worker=worker) + 1
    assert value(after, "carbotui_worker_start_time_seconds", worker=worker) > started
    assert value(after, "carbotui_worker_up", worker=worker) == 1


def test_what_a_scrape_holds():
    samples, text = scrape()
    names = {name for name, _ in samples}
    for expected in ("carbotui_sessions", "carbotui_logins_total", "carbotui_connections_total",
                     "carbotui_route_cache_hits_total", "carbotui_route_cache_misses_total",
                     "carbotui_ldap_up", "carbotui_memcached_up", "carbotui_throttled_total",
                     "carbotui_blocked_total", "carbotui_backend_sessions_active",
                     "carbotui_backend_errors_total", "carbotui_backend_connect_seconds_bucket",
                     "carbotui_web_requests_total", "carbotui_worker_restarts_total",
                     "carbotui_worker_start_time_seconds",
                     "carbotui_certificate_expiry_timestamp_seconds"):
        assert expected in names, expected
    assert value(samples, "carbotui_ldap_up") == 1 and value(samples, "carbotui_memcached_up") == 1
    expiry = value(samples, "carbotui_certificate_expiry_timestamp_seconds", kind="vhost",
                   name="demo.test")
    assert expiry > 0


def test_the_exporter_outlives_sigusr1():
    pid = process_pid("metrics")
    assert pid
    supervisorctl("signal", "USR1", "metrics")
    log = SETTINGS.log_dir / "metrics.log"
    wait_for(lambda: "SIGUSR1: no log file to reopen" in log.read_text(errors="replace"), 10,
             what="the exporter's USR1 line")
    assert process_pid("metrics") == pid
    assert scrape()[0]
