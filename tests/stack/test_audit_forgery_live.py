"""H2 against the running demo: an attacker who can put a line separator into an audit
value (a login name, an IMAP ID name, an HTTP User-Agent) must not blind auditwatch.

The review's reproduction: one failed IMAPS login whose name holds U+2028 and a forged
audit line dated 9999-12-31, then 30 real failures from another IP. Before the fix the
forged date became auditwatch's clock and the 30 failures raised no alert until it was
restarted. Sources are loopback addresses outside the demo's whitelist (127.0.0.31-39
are this test module's), so the proxy's IP accounting applies as to anyone.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime

import pytest

from carbotui.core.audit import parse_line
from carbotui.services.throttle import ip_key
from tests.stack.conftest import (HOST, PORTS, REPO, SETTINGS, WEB_PORTS, tls_context,
                                        wait_for)

pytestmark = pytest.mark.usefixtures("proxy_up", "memcached_in_use")

FORGER = "127.0.0.32"
ATTACKERS = [f"127.0.0.{n}" for n in range(33, 40)]
FORGED_IP = "198.51.100.7"
FORGED = f"9999-12-31 23:59:59,000 WARN  [x] [oip={FORGED_IP}] security - error=forged"
ALERTS = REPO / "var/log/alerts.log"


def alerts_since(start: float) -> list[dict]:
    out = []
    if ALERTS.exists():
        for raw in ALERTS.read_bytes().split(b"\n"):
            if raw:
                a = json.loads(raw)
                if datetime.fromisoformat(a["last_seen"]).timestamp() >= start - 1:
                    out.append(a)
    return out


def fresh_attacker(memcached) -> str:
    """One of our addresses that raised no `ip` alert within auditwatch's cooldown (a
    re-run within it would otherwise be de-duplicated, not blinded)."""
    cooldown = 300 + 5
    recent = {a["key"] for a in alerts_since(time.time() - cooldown) if a["rule"] == "ip"}
    for ip in ATTACKERS:
        if ip not in recent:
            memcached.delete(ip_key("imap", ip))
            return ip
    pytest.skip("every attacker address alerted in the last 5 minutes; run again later")


class Imaps:
    def __init__(self, source: str):
        raw = socket.create_connection((HOST, PORTS["imaps"]), timeout=20,
                                       source_address=(source, 0))
        self.sock = tls_context().wrap_socket(raw, server_hostname=HOST)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def command(self, tag: bytes, line: bytes) -> list[bytes]:
        self.sock.sendall(tag + b" " + line + b"\r\n")
        replies = []
        while True:
            reply = self.file.readline()
            if not reply:
                raise EOFError(replies)
            replies.append(reply)
            if reply.startswith(tag + b" "):
                return replies

    def close(self) -> None:
        self.sock.close()


def quoted(text: str) -> bytes:
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def wrong_passwords(source: str, accounts: list[str]) -> None:
    c = Imaps(source)
    assert c.greeting.startswith(b"* OK"), c.greeting
    for i, account in enumerate(accounts):
        assert c.command(b"t%d" % i, b"LOGIN %s wrong" % account.encode())[-1].startswith(
            b"t%d NO" % i)
    c.close()


def audit_lines_since(offset: int) -> list[bytes]:
    with open(SETTINGS.audit_log, "rb") as f:
        f.seek(offset)
        return [raw for raw in f.read().split(b"\n") if raw]


def test_forged_line_through_a_login_name_and_an_id_name_cannot_blind_auditwatch(memcached):
    attacker = fresh_attacker(memcached)
    memcached.delete(ip_key("imap", FORGER))
    start = time.time()
    offset = SETTINGS.audit_log.stat().st_size
    c = Imaps(FORGER)
    assert c.greeting.startswith(b"* OK")
    # 1. the login name itself: refused by the name decoder (before the fix it was
    #    audited, U+2028 and all)
    name = f"x\u2028{FORGED}"
    reply = c.command(b"a", b"LOGIN " + quoted(name) + b" wrong")[-1]
    assert reply.startswith(b"a BAD") or reply.startswith(b"a NO"), reply
    # 2. the IMAP ID name (it becomes ua= in the audit line), then a failed login
    c.command(b"b", b"ID (\"name\" " + quoted(f"mua\u2028{FORGED}") + b" \"version\" \"1\")")
    assert c.command(b"c", b"LOGIN user16@demo.test wrong")[-1].startswith(b"c NO")
    c.close()
    # 30 real failures from another address: 10 connections x 3 (max_auth_failures)
    accounts = [f"user{n}@demo.test" for n in (12, 14, 16, 18, 20)]
    threads = [threading.Thread(target=wrong_passwords,
                                args=(attacker, [accounts[(i + j) % 5] for j in range(3)]))
               for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def ip_alert():
        return [a for a in alerts_since(start) if a["rule"] == "ip" and a["key"] == attacker]
    [alert] = wait_for(ip_alert, 15, what=f"auditwatch's ip alert for {attacker}")
    assert alert["count"] >= 20 and set(alert["accounts"]) <= set(accounts)
    # No alert names the forged client, and every line written is one real event.
    assert not [a for a in alerts_since(start) if FORGED_IP in a["ips"]]
    lines = wait_for(lambda: [l for l in audit_lines_since(offset) if b"ua=mua" in l], 5,
                     what="the audit line of the login with the forged ID name")
    for raw in audit_lines_since(offset):
        text = raw.decode("utf-8", "replace")
        assert len(text.splitlines()) == 1, text
        event = parse_line(text)
        assert event is not None and event.client_ip != FORGED_IP, text
        assert event.timestamp < start + 60
    assert parse_line(lines[0].decode()).client_ip == FORGER


def test_web_user_agent_with_byte_0x85_is_one_audit_line(memcached):
    """carbotui/proxy/web.py decodes User-Agent as latin-1: byte 0x85 is NEL there."""
    offset = SETTINGS.audit_log.stat().st_size
    memcached.delete(ip_key("web", FORGER))
    raw = socket.create_connection((HOST, WEB_PORTS["https"]), timeout=20,
                                   source_address=(FORGER, 0))
    sock = tls_context().wrap_socket(raw, server_hostname="mail.demo.test")
    body = b"username=user02@demo.test&password=wrong"
    sock.sendall(b"POST /login HTTP/1.1\r\nHost: mail.demo.test\r\n"
                 b"User-Agent: webua\x85" + FORGED.encode() + b"\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]

    def ours():
        return [l for l in audit_lines_since(offset) if b"webua" in l]
    [line] = wait_for(ours, 5, what="the web login's audit line")
    text = line.decode("utf-8")
    assert "\x85" not in text and len(text.splitlines()) == 1
    event = parse_line(text)
    assert event.client_ip == FORGER and not event.ok
    assert not [l for l in audit_lines_since(offset) if FORGED_IP.encode() in l
                and parse_line(l.decode("utf-8", "replace")) is not None
                and parse_line(l.decode("utf-8", "replace")).client_ip == FORGED_IP]
