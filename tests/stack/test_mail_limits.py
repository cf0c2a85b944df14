"""The mail side's per-address cap, tried as an attacker would: from a non-whitelisted
127.x address, more connections than the cap on one worker; and the whitelist exempt."""
from __future__ import annotations

import socket

from carbotui.core.lines import recv_line
from tests.stack.conftest import HOST, read_stats, tls_context, wait_for

ATTACKER = "127.0.0.52"


def _open(port: int, source: str) -> tuple:
    raw = socket.create_connection((HOST, port), timeout=10, source_address=(source, 0))
    sock = tls_context().wrap_socket(raw, server_hostname=HOST)
    return sock, recv_line(sock, b"\r\n")


def test_one_address_holds_at_most_max_connections_per_ip_mail_sessions(custom_worker):
    w = custom_worker(port_base=25000, max_connections_per_ip=3)
    port = w.ports["imaps"]
    held = [_open(port, ATTACKER) for _ in range(3)]
    try:
        assert all(g.startswith(b"* OK") for _, g in held), [g for _, g in held]
        sock, greeting = _open(port, ATTACKER)
        sock.close()
        assert greeting == b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
        # POP3S shares the cap: it is the address's mail connections on this worker.
        sock, greeting = _open(w.ports["pop3s"], ATTACKER)
        sock.close()
        assert greeting.startswith(b"-ERR [SYS/TEMP] Too many connections")
        # Another address, and the whitelisted one, are not affected.
        for source in ("127.0.0.53", "127.0.0.1"):
            sock, greeting = _open(port, source)
            sock.close()
            assert greeting.startswith(b"* OK"), (source, greeting)
        # A place freed is a place again.
        held.pop()[0].close()
        wait_for(lambda: len(read_stats(str(w.stats_path))["sessions"]) == 2,
                 what="the closed session gone from the worker")
        sock, greeting = _open(port, ATTACKER)
        sock.close()
        assert greeting.startswith(b"* OK"), greeting
    finally:
        for sock, _ in held:
            sock.close()
