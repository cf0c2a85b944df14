"""Two carbotui nodes behind HAProxy with the PROXY protocol (`make cluster`)."""
from __future__ import annotations

import imaplib
import socket
import subprocess
import threading
import time

import pytest

from carbotui.core.audit import parse_line
from tests.stack.conftest import (CA, HOST, PASSWORD, REPO, port_open, supervisorctl,
                                        tls_context, wait_for)
from carbotui.protocols.proxyproto import build_v1, build_v2
from carbotui.backends.worker_sockets import read_stats_json as read_stats

FRONT = {"imap": 20143, "imaps": 20993, "pop3": 20110, "pop3s": 20995, "https": 20443}
NODES = {"node1": "127.0.0.11", "node2": "127.0.0.12"}
CLIENT = "127.0.0.77"          # a client address HAProxy must pass on


@pytest.fixture(scope="module")
def cluster():
    supervisorctl("start", "haproxy", "node1:*", "node2:*")
    try:
        proc = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "demo.stack", "wait",
                               "--cluster"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        yield
    finally:
        supervisorctl("stop", "haproxy", "node1:*", "node2:*")


def login_via_haproxy(user: str, source: str = CLIENT) -> imaplib.IMAP4_SSL:
    class SourceBound(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout):
            sock = socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0))
            return self.ssl_context.wrap_socket(sock, server_hostname=self.host)
    conn = SourceBound(HOST, FRONT["imaps"], ssl_context=tls_context(), timeout=15)
    conn.login(user, PASSWORD)
    return conn


def node_audit(node: str) -> list:
    path = REPO / "var/cluster" / node / "log/audit.log"
    return [e for e in map(parse_line, path.read_text().splitlines())] if path.exists() else []


def test_the_client_address_crosses_haproxy(cluster, memcached):
    from carbotui.services.throttle import ip_key
    memcached.delete(ip_key("imap", CLIENT))       # an earlier run may have counted it
    conn = login_via_haproxy("user01@demo.test")
    sessions = []
    for node in NODES:
        for sock in (REPO / "var/cluster" / node / "run").glob("proxy_*.sock"):
            sessions += read_stats(str(sock))["sessions"]
    assert any(s["client"] == CLIENT and s["account"] == "user01@demo.test" for s in sessions)
    conn.logout()
    events = [e for node in NODES for e in node_audit(node)
              if e and e.account == "user01@demo.test" and e.client_ip == CLIENT]
    assert events and events[-1].ok and events[-1].proxy_ip == HOST


def raw(node_ip: str, data: bytes, source: str = HOST, port: int = 10143,
        timeout: float = 10) -> bytes:
    with socket.create_connection((node_ip, port), timeout=timeout,
                                  source_address=(source, 0)) as s:
        if data:
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
                if b"\r\n" in out:
                    break
        except ConnectionResetError:
            pass
        return out


def test_nodes_accept_only_trusted_well_formed_headers(cluster):
    node = NODES["node1"]
    v2 = build_v2(("203.0.113.9", 5555), (HOST, 20143))
    assert raw(node, v2).startswith(b"* OK")                       # HAProxy-like peer
    assert raw(node, build_v1(("2001:db8::9", 5555), ("::1", 20143))).startswith(b"* OK")
    assert raw(node, build_v2()).startswith(b"* OK")               # LOCAL: health check
    assert raw(node, v2, source="127.0.0.5") == b""               # spoofed by a stranger
    assert raw(node, b"a1 LOGIN user01@demo.test demo-pass\r\n") == b""   # no header
    assert raw(node, b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n") == b""       # malformed
    started = time.monotonic()
    assert raw(node, b"") == b""                                   # silent: header timeout
    assert 2.5 < time.monotonic() - started < 6


def test_stopping_a_node_interrupts_no_new_login(cluster):
    results: list[tuple[float, bool]] = []
    halt = threading.Event()

    def logins():
        deadline = time.monotonic() + 40
        while not halt.is_set() and time.monotonic() < deadline:
            try:
                # From 127.0.0.1, which the demo whitelists: hundreds of logins a minute
                # from one address would otherwise be throttled, as they should be.
                login_via_haproxy("user05@demo.test", source=HOST).logout()
                results.append((time.monotonic(), True))
            except (OSError, imaplib.IMAP4.error):
                results.append((time.monotonic(), False))

    worker = threading.Thread(target=logins, daemon=True)
    worker.start()
    wait_for(lambda: len(results) > 10, 15, what="logins through HAProxy")
    stopped_at = time.monotonic()
    supervisorctl("stop", "node1:*")
    try:
        wait_for(lambda: sum(1 for t, _ in results if t > stopped_at) > 30, 30,
                 what="logins after the stop")
    finally:
        halt.set()
        worker.join()
        supervisorctl("start", "node1:*")
    after = [ok for t, ok in results if t > stopped_at]
    print(f"node stopped: {len(after)} logins through HAProxy after the stop, "
          f"{after.count(False)} failed")
    # SIGTERM drains: the node stops accepting at once, HAProxy sees it within its
    # check interval and retries; no new login may fail.
    assert all(after), f"{after.count(False)} of {len(after)} logins failed"
    wait_for(lambda: port_open(10143, NODES["node1"]), 15, what="node1 back")


def test_web_login_through_haproxy_is_audited_with_the_client_address(cluster, tmp_path):
    out = subprocess.run(["curl", "-sS", "--cacert", str(CA), "--interface", CLIENT,
                          "-d", f"username=user06@demo.test&password={PASSWORD}", "-o",
                          "/dev/null", "-w", "%{http_code}", f"https://{HOST}:{FRONT['https']}/login"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "302", out.stderr
    events = [e for node in NODES for e in node_audit(node)
              if e and e.account == "user06@demo.test" and e.protocol == "soap"]
    assert events and events[-1].client_ip == CLIENT


def test_every_node_of_the_fleet_is_visible(cluster):
    import json

    def nodes_seen():
        out = subprocess.run([str(REPO / ".venv/bin/carbotui"), "fleet"], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return {m["node"] for m in json.loads(out.stdout)}
    # Both cluster nodes and the demo node publish into the shared memcached.
    wait_for(lambda: {"node1", "node2"} <= nodes_seen() and len(nodes_seen()) >= 3, 15,
             interval=0.5, what="node1, node2 and the demo node in the fleet view")
