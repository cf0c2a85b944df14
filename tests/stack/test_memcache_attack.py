"""The review's H1 attack on the running stack: memcached desync by hanging up mid-check.

Clients from addresses outside the whitelist (127.0.0.21-27) complete a TLS handshake on
IMAPS and reset the connection (SO_LINGER 0) at once, while their session waits on
memcached for the block check; a whitelisted client (127.0.0.1) does the same right
after sending a LOGIN, while its route lookup waits. Meanwhile a blocked address
(127.0.0.29) keeps connecting. Before the fix a cancelled request left its reply in the
pooled connection: the blocked address was greeted (148 of 150) and every worker then
marked memcached down, turning blocks and throttles off for `reconnect` seconds.
"""
from __future__ import annotations

import secrets
import socket
import ssl
import struct
import threading

import pytest

from .conftest import (HOST, PORTS, imap_login, throttle_call, tls_context,
                       worker_stats)

ATTACKERS = [f"127.0.0.{i}" for i in range(21, 28)]
BLOCKED = "127.0.0.29"
TRIES = 100

pytestmark = pytest.mark.usefixtures("proxy_up", "memcached_in_use")


def _tls(source: str) -> ssl.SSLSocket:
    raw = socket.socket()
    raw.settimeout(5)
    raw.bind((source, 0))
    raw.connect((HOST, PORTS["imaps"]))
    return tls_context().wrap_socket(raw, server_hostname=HOST)


def _reset(sock: ssl.SSLSocket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()                                  # RST, not FIN


def _hang_up_after_handshake(source: str) -> None:
    _reset(_tls(source))


def _hang_up_after_login(source: str) -> None:
    sock = _tls(source)
    sock.recv(4096)                               # the greeting (127.0.0.1 is whitelisted)
    sock.sendall(b"a LOGIN nobody%s@demo.test x\r\n" % secrets.token_hex(3).encode())
    _reset(sock)


def _greeted(source: str) -> bool:
    sock = _tls(source)
    try:
        return sock.recv(200).startswith(b"* OK")
    except OSError:
        return False                              # closed without a greeting
    finally:
        sock.close()


def test_clients_hanging_up_mid_check_neither_unblock_nor_turn_memcached_off():
    before = {s["pid"]: s["cache"]["memcached_errors"] for s in worker_stats()}
    throttle_call("block", BLOCKED, 600, "test_memcache_attack")
    stop = threading.Event()
    attacks = [0]

    def attack(source: str, hang_up) -> None:
        while not stop.is_set():
            try:
                hang_up(source)
                attacks[0] += 1
            except OSError:
                pass

    threads = [threading.Thread(target=attack, args=(ip, _hang_up_after_handshake))
               for ip in ATTACKERS]
    threads.append(threading.Thread(target=attack, args=(HOST, _hang_up_after_login)))
    for t in threads:
        t.start()
    try:
        greeted = sum(_greeted(BLOCKED) for _ in range(TRIES))
    finally:
        stop.set()
        for t in threads:
            t.join()
        throttle_call("unblock", BLOCKED)
    after = worker_stats()
    print(f"{attacks[0]} hang-ups; blocked address greeted {greeted} of {TRIES}")

    assert attacks[0] >= 2 * TRIES                 # the attack did run alongside
    assert greeted == 0
    assert all(s["cache"]["memcached_available"] for s in after)
    assert {s["pid"]: s["cache"]["memcached_errors"] for s in after
            if s["pid"] in before} == {pid: n for pid, n in before.items()
                                       if pid in {s["pid"] for s in after}}
    # and everything still works for a real user
    conn = imap_login("user01@demo.test")
    conn.logout()
