"""The worker pool under supervisord: restarts, kills, reloads and limits."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from tests.stack.conftest import (HOST, PORTS, RawImap, first_subject_imap, imap_login,
                                        port_open, process_pid, supervisorctl, wait_for)

pytestmark = pytest.mark.usefixtures("proxy_up")


def proxy_workers() -> list[str]:
    return [line.split()[0] for line in supervisorctl("status").splitlines()
            if line.startswith("proxy:")]


def greet(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as s:
        return s.recv(200)


class Hammer(threading.Thread):
    """Connects and reads the greeting in a loop until stopped; counts failures."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.ok, self.failed, self.errors = port, 0, 0, []
        self.halt = threading.Event()

    def run(self):
        deadline = time.monotonic() + 60           # bounded even if never stopped
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                if greet(self.port).startswith(b"* OK"):
                    self.ok += 1
                else:
                    self.failed += 1
            except OSError as exc:
                self.failed += 1
                self.errors.append(repr(exc))

    def stop(self):
        self.halt.set()
        self.join()


def test_one_worker_per_core():
    assert len(proxy_workers()) == os.cpu_count()


def test_restarting_one_worker_refuses_no_connection():
    workers = proxy_workers()
    hammer = Hammer(PORTS["imap"])
    hammer.start()
    wait_for(lambda: hammer.ok > 20, what="traffic before the restart")
    supervisorctl("restart", workers[0])
    ok_at_restart = hammer.ok
    wait_for(lambda: hammer.ok > ok_at_restart + 20, what="traffic after the restart")
    hammer.stop()
    assert hammer.failed == 0, hammer.errors[:5]
    assert "RUNNING" in supervisorctl("status", workers[0])


def test_kill_9_of_a_worker_keeps_serving_and_supervisord_restarts_it():
    name = proxy_workers()[0]
    pid = process_pid(name)
    os.kill(pid, signal.SIGKILL)
    for _ in range(20):
        assert greet(PORTS["imap"]).startswith(b"* OK")
    new_pid = wait_for(lambda: (p := process_pid(name)) not in (0, pid) and p, 20,
                       what="supervisord to restart the killed worker")
    assert new_pid != pid
    wait_for(lambda: "RUNNING" in supervisorctl("status", name), 20, what="RUNNING again")


def test_sighup_reload_keeps_live_sessions():
    conn = imap_login("user17@demo.test")
    conn.select("INBOX")
    pids = [process_pid(n) for n in proxy_workers()]
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    assert conn.noop()[0] == "OK"
    assert first_subject_imap(conn) == "Subject: Welcome to mbox1"
    conn.logout()
    assert [process_pid(n) for n in proxy_workers()] == pids      # no restart
    imap_login("user18@demo.test").logout()


def test_connection_limit_per_worker(custom_worker):
    w = custom_worker(port_base=21000, max_connections=2)
    held = [socket.create_connection((HOST, w.ports["imap"]), timeout=5) for _ in range(2)]
    for s in held:
        assert s.recv(100).startswith(b"* OK")
    with socket.create_connection((HOST, w.ports["imap"]), timeout=5) as s:
        assert s.recv(100).startswith(b"* BYE [UNAVAILABLE]")
    for s in held:
        s.close()


def test_preauth_idle_timeout(custom_worker):
    w = custom_worker(port_base=22000, preauth_timeout=1)
    with socket.create_connection((HOST, w.ports["pop3"]), timeout=10) as s:
        assert s.recv(100).startswith(b"+OK")
        data = b""
        while chunk := s.recv(100):          # the server closes by itself
            data += chunk
        assert data.startswith(b"-ERR")


def test_failures_close_the_connection_after_the_limit(custom_worker):
    w = custom_worker(port_base=23000, max_auth_failures=2, auth_wait=0)
    c = RawImap(port=w.ports["imaps"])
    c.send(b"a LOGIN user01@demo.test bad1\r\n")
    assert c.until_tagged(b"a")[-1].startswith(b"a NO")
    c.send(b"b LOGIN user01@demo.test bad2\r\n")
    lines = [c.line(), c.line()]
    assert lines[0].startswith(b"b NO") and lines[1].startswith(b"* BYE"), lines
    c.close()


def find_session(port: int) -> tuple[str, int]:
    from tests.stack.conftest import worker_stats
    for s in worker_stats():
        for sess in s["sessions"]:
            if sess["client_port"] == port:
                return s["worker"], sess["id"]
    raise AssertionError(f"no session from port {port}")


def test_an_admin_can_kick_a_session():
    from carbotui.backends.worker_sockets import WorkerControl
    from tests.stack.conftest import REPO
    conn = imap_login("user19@demo.test")
    conn.select("INBOX")
    worker, session = find_session(conn.sock.getsockname()[1])
    WorkerControl(REPO / "var/run").kick(worker, session)
    line = conn.readline()
    assert line.startswith(b"* BYE")
    assert conn.readline() == b""          # and closed


def test_maintenance_refuses_new_logins_only_on_that_server():
    import imaplib
    from carbotui.backends.worker_sockets import WorkerControl
    from tests.stack.conftest import REPO
    ctl = WorkerControl(REPO / "var/run")
    before = imap_login("user01@demo.test")         # open before: must go on
    before.select("INBOX")
    ctl.maintenance("mbox1.demo.test", True)
    try:
        try:
            imap_login("user03@demo.test").logout()
            raise AssertionError("a login on a server in maintenance succeeded")
        except imaplib.IMAP4.error as exc:
            assert "UNAVAILABLE" in str(exc)
        imap_login("user04@demo.test").logout()      # mbox2 is unaffected
        assert first_subject_imap(before) == "Subject: Welcome to mbox1"
    finally:
        ctl.maintenance("mbox1.demo.test", False)
        before.logout()
    imap_login("user03@demo.test").logout()
