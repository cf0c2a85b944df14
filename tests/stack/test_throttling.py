"""Brute-force throttling through the real workers (counters in the real memcached)."""
from __future__ import annotations

import random
import socket
import ssl

import pytest

from carbotui.services.throttle import ip_key, user_key
from tests.stack.conftest import HOST, PORTS, imap_login, tls_context, worker_stats

pytestmark = pytest.mark.usefixtures("proxy_up", "memcached_in_use")


def greeting(port: int, source: str, tls: bool = False) -> bytes:
    raw = socket.create_connection((HOST, port), timeout=10, source_address=(source, 0))
    sock = tls_context().wrap_socket(raw, server_hostname=HOST) if tls else raw
    try:
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        sock.close()


def fresh_ip(memcached) -> str:
    """A loopback address no earlier run has counted (counters live 60 s)."""
    ip = f"127.0.{random.randint(10, 250)}.{random.randint(2, 250)}"
    for proto in ("imap", "pop3"):
        memcached.delete(ip_key(proto, ip))
    return ip


def test_ip_limit_rejects_that_ip_only_on_every_worker(memcached):
    ip = fresh_ip(memcached)
    # The demo allows 30 IMAP connections per IP and minute, counted by all workers together.
    replies = [greeting(PORTS["imap"], ip) for _ in range(30)]
    assert all(r.startswith(b"* OK") for r in replies)
    assert greeting(PORTS["imap"], ip) == b"* BYE Login rejected from this IP\r\n"
    assert greeting(PORTS["imaps"], ip, tls=True) == b"* BYE Login rejected from this IP\r\n"
    other = fresh_ip(memcached)
    assert greeting(PORTS["imap"], other).startswith(b"* OK")       # other IPs are fine
    imap_login("user01@demo.test").logout()                          # whitelisted 127.0.0.1
    # POP3 has its own counter (throttle:proto=p): fill it and get -ERR.
    for _ in range(30):
        assert greeting(PORTS["pop3"], ip).startswith(b"+OK")
    assert greeting(PORTS["pop3"], ip) == b"-ERR Login rejected from this IP\r\n"
    assert sum(s["throttled"].get("ip", 0) for s in worker_stats()) >= 3


def test_user_limit_after_repeated_failures(custom_worker, memcached):
    w = custom_worker(port_base=27000, auth_wait=0, max_auth_failures=100)
    login = f"victim{random.randint(1000, 9999)}@demo.test"
    memcached.delete(user_key(login))
    ip = fresh_ip(memcached)
    raw = socket.create_connection((HOST, w.ports["imaps"]), timeout=10, source_address=(ip, 0))
    sock = tls_context().wrap_socket(raw, server_hostname=HOST)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"* OK")
    for i in range(20):          # the demo's user_limit: 20 failures a minute
        sock.sendall(b"a%d LOGIN %s wrong\r\n" % (i, login.encode()))
        assert f.readline().startswith(b"a%d NO" % i)
    sock.sendall(b"z LOGIN %s wrong\r\n" % login.encode())
    assert f.readline() == b"* BYE Login rejected for this user\r\n"
    assert f.readline().startswith(b"z NO")
    sock.close()
    assert memcached.get(user_key(login)) == b"20"
