"""What the outside IMAP tester found, tried against the real stack: the largest ID RFC 2971
allows, a too-long line that leaves the session usable, the Backends count with sessions
open, and a Dovecot LOGOUT reply that nothing follows. (The byte-for-byte comparison of
whole sessions is tests/stack/test_differential.py.)"""
from __future__ import annotations

import socket

from tests.stack.conftest import (
    HOST, PASSWORD, PORTS, RawImap, imap_login, tls_context, wait_for, worker_stats,
)


def _largest_id() -> bytes:
    # RFC 2971 section 3.3: at most 30 pairs; fields up to 30 octets, values up to 1024.
    pairs = b" ".join(b'"%s" "%s"' % ((b"f%02d" % i).ljust(30, b"x"), b"v" * 1024)
                      for i in range(30))
    return b"i1 ID (" + pairs + b")\r\n"


def test_the_largest_legal_id_passes_and_the_login_goes_on():
    line = _largest_id()
    assert len(line) > 31000
    c = RawImap()
    try:
        c.send(line)
        reply = c.until_tagged(b"i1")
        assert reply[-1].startswith(b"i1 OK"), reply
        c.send(b"l1 LOGIN user11@demo.test " + PASSWORD.encode() + b"\r\n")
        assert c.until_tagged(b"l1")[-1].startswith(b"l1 OK")
        c.send(b"s1 SELECT INBOX\r\n")
        assert c.until_tagged(b"s1")[-1].startswith(b"s1 OK")
    finally:
        c.close()


def test_a_line_over_the_limit_gets_bad_and_the_session_goes_on():
    c = RawImap()
    try:
        c.send(b"big NOOP " + b"x" * 70000 + b"\r\nn1 NOOP\r\n")
        assert c.line() == b"big BAD [TOOBIG] Command line too long"
        assert c.line().startswith(b"n1 OK")
    finally:
        c.close()


def _active() -> dict[str, int]:
    out: dict[str, int] = {}
    for s in worker_stats():
        for name, b in s["backends"].items():
            out[name] = out.get(name, 0) + b["active"]
    return out


def test_backends_count_the_open_sessions_and_forget_the_ended_ones():
    before = _active()
    # Six accounts on each mailbox server (odd numbers on mbox1, even on mbox2).
    users = [f"user{n:02d}@demo.test" for n in range(1, 13)]
    conns = [imap_login(u) for u in users]
    try:
        wait_for(lambda: all(_active().get(n, 0) - before.get(n, 0) == 6
                             for n in ("mbox1", "mbox2")),
                 what="6 more open sessions on each mailbox server")
    finally:
        for c in conns[:6]:
            c.logout()
        for c in conns[6:]:          # no LOGOUT: the client just goes away
            c.shutdown()
    wait_for(lambda: all(_active().get(n, 0) == before.get(n, 0) for n in ("mbox1", "mbox2")),
             what="the counts back where they were")


def test_nothing_follows_dovecots_logout_reply():
    """Dovecot's "* BYE Logging out" and "OK Logout completed (0.001 + 0.000 secs)." come
    in one read of more than 64 bytes: the client gets them, then the close."""
    for kind in ("imaps", "imap"):
        raw = socket.create_connection((HOST, PORTS[kind]), timeout=10)
        if kind == "imap":
            raw.recv(4096)
            raw.sendall(b"s STARTTLS\r\n")
            assert raw.recv(4096).startswith(b"s OK")
        sock = tls_context().wrap_socket(raw, server_hostname=HOST)
        if kind == "imaps":
            sock.recv(4096)
        sock.sendall(b"a LOGIN user13@demo.test " + PASSWORD.encode() + b"\r\n")
        data = b""
        while b"a OK" not in data:
            data += sock.recv(65536)
        tag = b"t" * 60
        sock.sendall(tag + b" LOGOUT\r\n")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        sock.close()
        lines = rest.split(b"\r\n")
        assert lines[0] == b"* BYE Logging out", rest
        assert lines[1].startswith(tag + b" OK Logout completed") and lines[2:] == [b""], rest
