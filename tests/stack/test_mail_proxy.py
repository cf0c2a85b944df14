"""IMAP/POP3 through the proxy against the real demo stack."""
from __future__ import annotations

import base64
import imaplib
import select
import poplib
import socket
import ssl
import subprocess
import time

import pytest

from tests.stack.conftest import (CA, HOST, PASSWORD, PORTS, REPO, RawImap,
                                        first_subject_imap, flush_routes, imap_login,
                                        pop3_login, supervisorctl, tls_context, total,
                                        worker_stats)

pytestmark = pytest.mark.usefixtures("proxy_up")

# Odd accounts live on mbox1, even ones on mbox2; each Dovecot knows only its own.
USERS = [(f"user{n:02d}@demo.test", "mbox1" if n % 2 else "mbox2") for n in (1, 2, 3, 4)]


@pytest.mark.parametrize("kind", ["imap", "imaps"])
@pytest.mark.parametrize("user, server", USERS)
def test_imap_login_lands_on_own_server(kind, user, server, audit):
    conn = imap_login(user, kind)
    try:
        assert first_subject_imap(conn) == f"Subject: Welcome to {server}"
    finally:
        conn.logout()
    line = audit.wait(f"account={user}; protocol=imap;")[0]
    assert " INFO  [" in line and ";oip=127.0.0.1;" in line and "error=" not in line


@pytest.mark.parametrize("kind", ["pop3", "pop3s"])
@pytest.mark.parametrize("user, server", USERS)
def test_pop3_login_lands_on_own_server(kind, user, server, audit):
    conn = pop3_login(user, kind)
    try:
        count, _ = conn.stat()
        assert count >= 1
        _, lines, _ = conn.retr(1)
        assert f"Subject: Welcome to {server}".encode() in lines
    finally:
        conn.quit()
    audit.wait(f"account={user}; protocol=pop3;", " INFO  [")


def test_wrong_password_gets_no_and_audit_warn(audit):
    conn = imaplib.IMAP4_SSL(HOST, PORTS["imaps"], ssl_context=tls_context(), timeout=15)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        conn.login("user03@demo.test", "wrong-pass")
    # The session survives a failure: the right password works next.
    conn.login("user03@demo.test", PASSWORD)
    conn.logout()
    warn = audit.wait("account=user03@demo.test; protocol=imap;", " WARN  [")[0]
    assert "error=authentication failed for [user03@demo.test], invalid password;" in warn
    assert "wrong-pass" not in "".join(audit.lines())


def test_wrong_password_pop3_and_unknown_account(audit):
    conn = poplib.POP3_SSL(HOST, PORTS["pop3s"], context=tls_context(), timeout=15)
    conn.user("user04@demo.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        conn.pass_("nope")
    conn.user("ghost@demo.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        conn.pass_(PASSWORD)
    conn.quit()
    audit.wait("account=user04@demo.test; protocol=pop3;", "invalid password")
    audit.wait("account=ghost@demo.test; protocol=pop3;", "account not found")


@pytest.mark.parametrize("kind", ["imaps", "pop3s"])
def test_tls_offers_no_session_tickets(kind):
    """Workers share no ticket key or session cache, so resumption is not offered: no
    TLS 1.3 tickets (each cost every handshake CPU and sat in a per-worker cache)."""
    ctx = tls_context()
    with socket.create_connection((HOST, PORTS[kind]), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="mail.demo.test") as conn:
        assert conn.recv(200).startswith((b"* OK", b"+OK"))   # tickets come before this
        assert conn.version() == "TLSv1.3"
        assert not conn.session.has_ticket


def test_starttls_is_required_on_the_plain_port():
    conn = imaplib.IMAP4(HOST, PORTS["imap"], timeout=15)
    assert "LOGINDISABLED" in conn.capabilities and "STARTTLS" in conn.capabilities
    assert "AUTH=PLAIN" not in conn.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        conn.login("user01@demo.test", PASSWORD)
    conn.starttls(tls_context())
    assert "AUTH=PLAIN" in conn.capabilities and "LOGINDISABLED" not in conn.capabilities
    conn.login("user01@demo.test", PASSWORD)
    conn.logout()


def test_login_with_literals_and_authenticate_plain():
    c = RawImap()
    c.send(b"a1 LOGIN {16}\r\n")
    assert c.line().startswith(b"+")
    c.send(b"user05@demo.test {9}\r\n")
    assert c.line().startswith(b"+")
    c.send(b"demo-pass\r\n")
    assert c.until_tagged(b"a1")[-1].startswith(b"a1 OK")
    c.send(b"a2 SELECT INBOX\r\n")
    assert c.until_tagged(b"a2")[-1].startswith(b"a2 OK")
    c.close()

    c = RawImap()       # LITERAL+: no continuation round trip
    c.send(b"b1 LOGIN {16+}\r\nuser05@demo.test {9+}\r\ndemo-pass\r\n")
    assert c.until_tagged(b"b1")[-1].startswith(b"b1 OK")
    c.close()

    sasl = base64.b64encode(b"\0user06@demo.test\0demo-pass")
    c = RawImap()       # SASL-IR
    c.send(b"c1 AUTHENTICATE PLAIN " + sasl + b"\r\n")
    assert c.until_tagged(b"c1")[-1].startswith(b"c1 OK")
    c.close()

    conn = imaplib.IMAP4_SSL(HOST, PORTS["imaps"], ssl_context=tls_context(), timeout=15)
    conn.authenticate("PLAIN", lambda _: b"\0user06@demo.test\0demo-pass")   # continuation
    assert first_subject_imap(conn) == "Subject: Welcome to mbox2"
    conn.logout()


def test_alias_and_bare_logins_reach_the_account(audit):
    conn = imap_login("nick07@demo.test")
    assert first_subject_imap(conn) == "Subject: Welcome to mbox1"
    conn.logout()
    # A bare login takes the domain whose zimbraVirtualIPAddress we reached (127.0.0.1).
    conn = imap_login("user08")
    assert first_subject_imap(conn) == "Subject: Welcome to mbox2"
    conn.logout()
    audit.wait("account=user07@demo.test; protocol=imap;")
    audit.wait("account=user08@demo.test; protocol=imap;")


def test_big_append_and_fetch_are_byte_exact():
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    message = (b"From: a@demo.test\r\nSubject: big\r\nContent-Type: application/octet-stream\r\n"
               b"\r\n" + base64.encodebytes(body).replace(b"\n", b"\r\n"))
    conn = imap_login("user09@demo.test")
    try:
        conn.create("Big")
        conn.select("Big")
        typ, data = conn.append("Big", None, None, message)
        assert typ == "OK", data
        typ, data = conn.search(None, "ALL")
        last = data[0].split()[-1]
        typ, data = conn.fetch(last, "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == message
    finally:
        conn.select("INBOX")
        conn.delete("Big")
        conn.logout()


def test_idle_is_held_for_30_seconds_and_sees_new_mail():
    conn = imap_login("user11@demo.test")
    conn.select("INBOX")
    tag = conn._new_tag()
    conn.send(tag + b" IDLE\r\n")
    assert conn.readline().startswith(b"+")
    # Nothing may close the idling session for 30 s (the proxy's post-auth idle limit
    # is 30 min): no BYE, no EOF. Dovecot's own "* OK Still here" keepalive may pass.
    started = time.monotonic()
    while (left := 30 - (time.monotonic() - started)) > 0:
        readable, _, _ = select.select([conn.sock], [], [], left)
        if readable or conn.sock.pending():
            line = conn.readline()
            assert line.startswith(b"* OK"), line       # a keepalive, not a BYE or EOF
    assert time.monotonic() - started >= 30
    other = imap_login("user11@demo.test")
    other.append("INBOX", None, None, b"Subject: during idle\r\n\r\nhello\r\n")
    other.logout()
    assert b"EXISTS" in conn.readline()
    conn.send(b"DONE\r\n")
    while not (line := conn.readline()).startswith(tag):
        pass
    assert b"OK" in line
    conn.logout()


def test_route_is_cached_and_second_login_skips_ldap(memcached):
    flush_routes("user13@demo.test")
    assert memcached.get(b"route:proto=imap;user=user13@demo.test") is None
    imap_login("user13@demo.test").logout()
    assert memcached.get(b"route:proto=imap;user=user13@demo.test") == b"127.0.0.1:7143"
    before = total(worker_stats(), "cache", "ldap_lookups")
    for _ in range(4):     # whichever worker takes it, none asks LDAP
        imap_login("user13@demo.test").logout()
    after = worker_stats()
    assert total(after, "cache", "ldap_lookups") == before
    assert total(after, "cache", "hits") >= 4


def test_poisoned_cache_entry_is_ignored(memcached):
    key = b"route:proto=imap;user=user15@demo.test"
    flush_routes("user15@demo.test")
    memcached.set(key, b"127.0.0.99:7143")       # no such mailbox server
    conn = imap_login("user15@demo.test")
    assert first_subject_imap(conn) == "Subject: Welcome to mbox1"
    conn.logout()
    assert memcached.get(key) == b"127.0.0.1:7143"


def test_crlf_in_a_login_never_reaches_memcached(memcached):
    memcached.set(b"canary", b"alive")
    evil = (b"x\r\nset injected 0 0 1\r\nX\r\nflush_all\r\nget route:proto=imap;user=y"
            b"@demo.test")
    c = RawImap()
    c.send(b"e1 LOGIN {%d+}\r\n%s {3+}\r\nabc\r\n" % (len(evil), evil))
    reply = c.until_tagged(b"e1")[-1]
    assert reply.startswith(b"e1 NO") or reply.startswith(b"e1 BAD")
    c.close()
    assert memcached.get(b"canary") == b"alive"
    assert memcached.get(b"injected") is None
    for key in memcached.keys():
        assert all(0x21 <= b < 0x7F for b in key), key


def test_memcached_down_logins_still_succeed(memcached):
    supervisorctl("stop", "memcached")
    try:
        for user, server in USERS[:2]:
            conn = imap_login(user)
            assert first_subject_imap(conn) == f"Subject: Welcome to {server}"
            conn.logout()
    finally:
        supervisorctl("start", "memcached")
    logs = "".join(p.read_text(errors="replace") for p in (REPO / "var/log").glob("proxy_*.log"))
    assert "memcached 127.0.0.1:12211 unavailable" in logs


def test_curl_reads_mail_over_imaps_and_pop3s():
    common = ["curl", "-sS", "--max-time", "20", "--cacert", str(CA), "-u",
              f"user01@demo.test:{PASSWORD}"]
    out = subprocess.run(common + [f"imaps://{HOST}:{PORTS['imaps']}/INBOX;UID=1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Welcome to mbox1" in out.stdout
    out = subprocess.run(common[:-1] + [f"user02@demo.test:{PASSWORD}",
                                        f"pop3s://{HOST}:{PORTS['pop3s']}/1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Welcome to mbox2" in out.stdout


def test_malformed_and_oversized_input_get_clear_errors():
    c = RawImap()
    c.send(b"\x00\xff garbage\r\n")
    assert c.line().startswith(b"* BAD")
    c.send(b"z1 FROBNICATE\r\n")
    assert c.line().startswith(b"z1 BAD")
    c.send(b"z2 LOGIN {999999999}\r\n")
    assert c.line().startswith(b"z2 BAD")
    c.send(b"z3 NOOP\r\n")                      # still in sync after the refused literal
    assert c.line().startswith(b"z3 OK")
    c.send(b"z4 NOOP " + b"A" * 100_000 + b"\r\n")
    assert c.line() == b"z4 BAD [TOOBIG] Command line too long"
    c.send(b"z5 LOGIN {99999999999+}\r\n")     # too many digits to stay in step
    assert c.line().startswith(b"* BYE")
    with pytest.raises((EOFError, ConnectionError, ssl.SSLError)):
        c.line()
    c.close()
    # And the worker serves the next client.
    imap_login("user01@demo.test").logout()
