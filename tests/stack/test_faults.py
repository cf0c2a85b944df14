"""Faults, each with real processes: what is lost, what is not, how fast it recovers.

Every login attempt made here must leave exactly one audit line (matched by
the client's source port), whatever else happens.
"""
from __future__ import annotations

import imaplib
import os
import poplib
import signal
import socket
import threading
import time

import psutil
import pytest

from carbotui.core.audit import parse_line
from tests.stack.conftest import (HOST, PASSWORD, PORTS, AuditTail, first_subject_imap,
                                        imap_login, process_pid, supervisorctl, tls_context,
                                        wait_for)

pytestmark = pytest.mark.usefixtures("proxy_up")


class LoginLoop(threading.Thread):
    """Logs in and out over IMAPS in a loop; records (start, ok, client port, error)."""

    def __init__(self, user: str = "user05@demo.test", port: int = PORTS["imaps"],
                 limit: float = 90):
        super().__init__(daemon=True)
        self.user, self.port, self.limit = user, port, limit
        self.results: list[tuple[float, bool, int, str]] = []
        self.halt = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.limit          # bounded even if never stopped
        while not self.halt.is_set() and time.monotonic() < deadline:
            started, port = time.monotonic(), 0
            try:
                conn = imaplib.IMAP4_SSL(HOST, self.port, ssl_context=tls_context(), timeout=20)
                port = conn.sock.getsockname()[1]
                conn.login(self.user, PASSWORD)
                conn.logout()
                self.results.append((started, True, port, ""))
            except (OSError, imaplib.IMAP4.error) as exc:
                self.results.append((started, False, port, repr(exc)))

    def after(self, t: float) -> list:
        return [r for r in self.results if r[0] > t]

    def stop(self):
        self.halt.set()
        self.join()

    def wait_more(self, n: int, timeout: float = 30):
        have = len(self.results)
        wait_for(lambda: len(self.results) >= have + n, timeout, what=f"{n} more logins")


def proxy_names() -> list[str]:
    return [l.split()[0] for l in supervisorctl("status").splitlines() if l.startswith("proxy:")]


def assert_one_audit_line_each(audit: AuditTail, loop: LoginLoop) -> None:
    wait_for(lambda: _audited_ports(audit) >= {r[2] for r in loop.results if r[1]}, 10,
             what="audit lines of every successful login")
    counts: dict[int, int] = {}
    for line in audit.lines():
        e = parse_line(line)
        if e and e.account == loop.user:
            counts[e.client_port] = counts.get(e.client_port, 0) + 1
    # Loopback reuses a client port within a second (tcp_tw_reuse=2 takes ports out of
    # TIME_WAIT; seen: 42344 twice 0.3 s apart): a port may carry several attempts. Each
    # successful login has its line, and no attempt has two.
    ok: dict[int, int] = {}
    tried: dict[int, int] = {}
    for started, success, port, error in loop.results:
        tried[port] = tried.get(port, 0) + 1
        if success:
            ok[port] = ok.get(port, 0) + 1
    for port, n in ok.items():
        assert counts.get(port, 0) >= n, f"port {port}: {n} logins, {counts.get(port)} lines"
    for port, n in counts.items():
        assert n <= tried.get(port, 0), f"port {port}: {n} audit lines, {tried.get(port)} tries"


def _audited_ports(audit: AuditTail) -> set[int]:
    return {e.client_port for e in map(parse_line, audit.lines()) if e}


def test_kill_9_under_load_loses_only_that_workers_sessions(audit):
    from tests.stack.test_workers import find_session
    held = [imap_login(f"user{n:02d}@demo.test") for n in (1, 2, 3, 4, 6, 8, 10, 12)]
    victim = proxy_names()[0]
    pid = process_pid(victim)
    owner = {conn: find_session(conn.sock.getsockname()[1])[0] for conn in held}
    assert victim.split(":")[1] in owner.values(), "no held session on the victim; rerun"
    loop = LoginLoop()
    loop.start()
    try:
        loop.wait_more(10)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        loop.wait_more(30)
    finally:
        loop.stop()
    failed_new = [r for r in loop.after(killed_at) if not r[1]]
    assert not failed_new, failed_new[:3]
    print(f"kill -9: {len(loop.after(killed_at))} logins after the kill, 0 failed")
    for conn, worker in owner.items():
        try:
            alive = conn.noop()[0] == "OK"
        except (OSError, imaplib.IMAP4.abort):
            alive = False
        assert alive == (worker != victim.split(":")[1]), (worker, alive)
        if alive:
            conn.logout()
    wait_for(lambda: process_pid(victim) not in (0, pid), 20, what="supervisord restart")
    assert_one_audit_line_each(audit, loop)


def test_rolling_restart_under_load_fails_no_login(audit):
    loop = LoginLoop()
    loop.start()
    try:
        loop.wait_more(5)
        started = time.monotonic()
        for name in proxy_names():
            old = process_pid(name)
            supervisorctl("restart", name)
            assert process_pid(name) != old
        loop.wait_more(10)
        took = time.monotonic() - started
    finally:
        loop.stop()
    failed = [r for r in loop.results if not r[1]]
    assert not failed, failed[:3]
    assert took < 60
    print(f"rolling restart of {len(proxy_names())} workers: {took:.1f}s, "
          f"{len(loop.results)} logins, 0 failed")
    assert_one_audit_line_each(audit, loop)


def test_sighup_under_load_fails_no_login_and_applies(custom_worker, tmp_path):
    w = custom_worker(port_base=26000, max_auth_failures=5)
    loop = LoginLoop(port=w.ports["imaps"])
    loop.start()
    try:
        loop.wait_more(5)
        cfg = tmp_path / "carbotui.toml"
        cfg.write_text(cfg.read_text().replace("max_auth_failures = 5", "max_auth_failures = 1"))
        w.proc.send_signal(signal.SIGHUP)
        loop.wait_more(10)
    finally:
        loop.stop()
    assert all(r[1] for r in loop.results), [r for r in loop.results if not r[1]][:3]
    # New setting in force: one failure now ends the session.
    def closes_after_one_failure():
        conn = imaplib.IMAP4_SSL(HOST, w.ports["imaps"], ssl_context=tls_context(), timeout=10)
        try:
            conn.login("user01@demo.test", "bad")
        except imaplib.IMAP4.error:
            pass
        try:
            conn.noop()
            return False
        except (imaplib.IMAP4.abort, OSError):
            return True
    wait_for(closes_after_one_failure, 10, interval=0.2, what="reloaded max_auth_failures")


def test_memcached_down_then_back_refills_the_cache(memcached):
    from tests.stack.conftest import flush_routes
    flush_routes("user11@demo.test")
    supervisorctl("stop", "memcached")
    try:
        conn = imap_login("user11@demo.test")
        assert first_subject_imap(conn) == "Subject: Welcome to mbox1"
        conn.logout()
    finally:
        supervisorctl("start", "memcached")
    back_at = time.monotonic()

    def cached():
        imap_login("user11@demo.test").logout()
        return memcached.get(b"route:proto=imap;user=user11@demo.test") == b"127.0.0.1:7143"
    wait_for(cached, 20, interval=0.5, what="the route cached again")
    print(f"cache refilled {time.monotonic() - back_at:.1f}s after memcached came back")


def test_ldap_down_cached_routes_work_uncached_get_a_quick_temporary_error(
        memcached, memcached_in_use, audit):
    imap_login("user07@demo.test").logout()              # cached now
    for key in (b"route:proto=imap;user=user09@demo.test", b"route:proto=pop3;user=user09@demo.test"):
        memcached.delete(key)
    supervisorctl("stop", "slapd")
    try:
        conn = imap_login("user07@demo.test")
        assert first_subject_imap(conn) == "Subject: Welcome to mbox1"
        conn.logout()
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
            imap_login("user09@demo.test")
        assert time.monotonic() - started < 10
        print(f"LDAP down: uncached login refused in {time.monotonic() - started:.2f}s")
        pop = poplib.POP3_SSL(HOST, PORTS["pop3s"], context=tls_context(), timeout=15)
        pop.user("user09@demo.test")
        with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
            pop.pass_(PASSWORD)
        pop.quit()
    finally:
        supervisorctl("start", "slapd")
    audit.wait("account=user09@demo.test; protocol=imap;", "no route", " WARN  [")
    wait_for(lambda: _login_ok("user09@demo.test"), 20, interval=0.5, what="LDAP back")


def _login_ok(user: str) -> bool:
    try:
        imap_login(user).logout()
        return True
    except imaplib.IMAP4.error:
        return False


def test_a_mailbox_server_killed_mid_session_tells_its_clients_only():
    on_mbox1 = imap_login("user13@demo.test")
    on_mbox1.select("INBOX")
    on_mbox2 = imap_login("user14@demo.test")
    on_mbox2.select("INBOX")
    supervisorctl("signal", "KILL", "mbox1")
    try:
        line = b""
        on_mbox1.sock.settimeout(15)
        try:
            on_mbox1.send(b"x NOOP\r\n")
            while not line.startswith(b"* BYE"):
                line = on_mbox1.readline()
                assert line, "closed without a BYE"
        except (OSError, imaplib.IMAP4.abort):
            pass
        assert line.startswith(b"* BYE")
        assert on_mbox2.noop()[0] == "OK"
        assert first_subject_imap(on_mbox2) == "Subject: Welcome to mbox2"
        on_mbox2.logout()
    finally:
        wait_for(lambda: "RUNNING" in supervisorctl("status", "mbox1"), 30,
                 what="mbox1 restarted by supervisord")
    wait_for(lambda: _login_ok("user13@demo.test"), 20, interval=0.5, what="mbox1 serving")


def test_slow_clients_on_every_port_are_bounded_and_others_served():
    pids = [process_pid(n) for n in proxy_names()]
    rss_before = sum(psutil.Process(p).memory_info().rss for p in pids)
    ports = [PORTS["imap"], PORTS["imaps"], PORTS["pop3"], PORTS["pop3s"], 10080, 10443]
    slow = []
    for port in ports:
        for _ in range(100):
            s = socket.create_connection((HOST, port), timeout=5)
            s.sendall(b"a")            # a first byte, then nothing (slowloris)
            slow.append(s)
    try:
        conn = imap_login("user15@demo.test")
        assert first_subject_imap(conn) == "Subject: Welcome to mbox1"
        conn.logout()
        rss_after = sum(psutil.Process(p).memory_info().rss for p in pids)
        assert rss_after - rss_before < 40 * 1024 * 1024
    finally:
        for s in slow:
            s.close()
