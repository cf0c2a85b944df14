"""Byte transcripts for the POP3 pre-auth machines (carbotui/protocols/pop3.py)."""
from __future__ import annotations

import base64
import dataclasses

import pytest

from carbotui.protocols.events import (
    Authenticate, BackendFailed, Close, LoginOK, LoginRejected, MailLimits, Send, StartTLS,
)
from carbotui.protocols.pop3 import Pop3BackendLogin, Pop3ClientSide

from tests.support.transcripts import bytewise, login_bytewise, run, split

ONLY_LIMITS = MailLimits()                      # starttls "only" is the default
ON_LIMITS = MailLimits(starttls="on")
OFF_LIMITS = MailLimits(starttls="off")

FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
PRIVACY = (b"-ERR [SYS/PERM] Plaintext authentication disallowed on non-secure connections; "
           b"use STLS first.\r\n")


# ---------------------------------------------------------------- helpers

def client(limits: MailLimits = OFF_LIMITS, tls: bool = False) -> Pop3ClientSide:
    return Pop3ClientSide(limits, tls=tls)


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def pending(c: Pop3ClientSide, data: bytes) -> Authenticate:
    sent, events = run(c, data)
    assert [type(e) for e in events] == [Authenticate], (sent, events)
    return events[0]


def capa(*lines: str) -> bytes:
    return b"+OK Capability list follows\r\n" + "".join(f"{x}\r\n" for x in lines).encode() \
        + b".\r\n"


BASE = ("TOP", "USER", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE")
NO_USER = tuple(c for c in BASE if c != "USER")


# ------------------------------------------------------ greeting and CAPA

@pytest.mark.parametrize("limits, tls, lines", [
    (ONLY_LIMITS, False, NO_USER + ("STLS",)),
    (ON_LIMITS, False, BASE + ("SASL PLAIN", "STLS")),
    (OFF_LIMITS, False, BASE + ("SASL PLAIN",)),
    (ONLY_LIMITS, True, BASE + ("SASL PLAIN",)),
    (MailLimits(sasl_plain=False), True, BASE),
])
def test_capa_per_mode(limits, tls, lines):
    c = Pop3ClientSide(limits, tls=tls)
    assert c.greeting() == b"+OK POP3 proxy ready\r\n"
    assert c.capabilities == lines
    assert c.capability_line == " ".join(lines)
    assert run(c, b"CAPA\r\n") == (capa(*lines), [])


def test_commands_are_case_insensitive_and_lf_only_is_fine():
    assert run(client(), b"capa\nNoOp\r\n") == (capa(*BASE, "SASL PLAIN") + b"+OK\r\n", [])


def test_unknown_starttls_mode_is_refused():
    with pytest.raises(ValueError):
        Pop3ClientSide(MailLimits(starttls="maybe"), tls=False)


def test_quit_closes_and_ignores_the_rest():
    c = client()
    assert run(c, b"QUIT\r\nNOOP\r\n") == (b"+OK Logging out\r\n", [Close("client logged out")])
    assert c.feed(b"NOOP\r\n") == []


@pytest.mark.parametrize("line, reply", [
    (b"", b"-ERR Unknown command.\r\n"),
    (b"RETR 1", b"-ERR Unknown command.\r\n"),
    (b"APOP bob 0123", b"-ERR Unknown command.\r\n"),
    (b"\x16\x03\x01", b"-ERR Unknown command.\r\n"),
    (b"CAPA x", b"-ERR Unexpected argument.\r\n"),
    (b"NOOP \x00", b"-ERR NUL byte in command.\r\n"),
    (b"USER", b"-ERR Empty username.\r\n"),
    (b"USER b\tb", b"-ERR Username contains control characters.\r\n"),
    (b"USER \xff", b"-ERR Username is not valid UTF-8.\r\n"),
    (b"PASS x", b"-ERR Send USER first.\r\n"),
])
def test_bad_commands(line, reply):
    c = client()
    assert run(c, line + b"\r\n") == (reply, [])
    assert run(c, b"NOOP\r\n") == (b"+OK\r\n", [])


def test_line_too_long_is_refused_and_the_session_goes_on():
    c = client(dataclasses.replace(OFF_LIMITS, max_line=10))
    assert run(c, b"USER bobby\r\n") == (b"+OK\r\n", [])         # exactly 10
    assert run(c, b"USER bobbyx") == (b"", [])                  # over: dropped as it comes
    run(c, b"y" * 50000)
    assert len(c._buf) <= 64                                    # bounded without a line end
    assert run(c, b"\r\nNOOP\r\n") == (b"-ERR Line too long.\r\n+OK\r\n", [])


# --------------------------------------------------------------- USER/PASS

def test_user_pass():
    sent, events = bytewise(client, b"USER bob@example.com\r\nPASS  pass word \r\n")
    assert sent == b"+OK\r\n"
    # PASS takes the rest of the line, spaces and all.
    assert events == [Authenticate("bob@example.com", " pass word ", mechanism="USER")]


def test_pass_needs_a_password_and_forgets_the_user():
    c = client()
    assert run(c, b"USER bob\r\nPASS\r\nPASS x\r\n") == (
        b"+OK\r\n-ERR PASS expects a password.\r\n-ERR Send USER first.\r\n", [])
    assert run(c, b"USER bob\r\nPASS \xff\r\n") == (
        b"+OK\r\n-ERR Password is not valid UTF-8.\r\n", [])


def test_only_mode_refuses_plaintext_logins_before_tls():
    c = client(ONLY_LIMITS)
    assert run(c, b"USER bob\r\nPASS pw\r\nAUTH PLAIN " + plain("", "bob", "pw") + b"\r\nAUTH\r\n"
               ) == (PRIVACY * 4, [])


def test_on_mode_allows_plaintext_logins():
    assert pending(client(ON_LIMITS), b"USER bob\r\nPASS pw\r\n") == Authenticate(
        "bob", "pw", mechanism="USER")


# ------------------------------------------------------------------- STLS

def test_stls_discards_pipelined_plaintext_and_forgets_user():
    c = client(ONLY_LIMITS)
    assert run(c, b"STLS\r\nUSER bob\r\nPASS x\r\n") == (
        b"+OK Begin TLS negotiation\r\n", [StartTLS()])
    assert c.feed(b"USER mallory\r\n") == []            # plaintext before the handshake
    assert c.tls_started() == []
    assert c.tls and "STLS" not in c.capabilities and "USER" in c.capabilities
    assert run(c, b"PASS x\r\n") == (b"-ERR Send USER first.\r\n", [])
    assert pending(c, b"USER bob\r\nPASS pw\r\n") == Authenticate("bob", "pw", mechanism="USER")


def test_user_before_stls_is_forgotten():
    c = client(ON_LIMITS)
    assert run(c, b"USER bob\r\nSTLS\r\n") == (b"+OK\r\n+OK Begin TLS negotiation\r\n",
                                               [StartTLS()])
    c.tls_started()
    assert run(c, b"PASS pw\r\n") == (b"-ERR Send USER first.\r\n", [])


def test_stls_refused():
    assert run(client(ONLY_LIMITS, tls=True), b"STLS\r\n") == (
        b"-ERR TLS is already active.\r\n", [])
    assert run(client(OFF_LIMITS), b"STLS\r\n") == (b"-ERR STLS is not available.\r\n", [])
    assert run(client(ONLY_LIMITS), b"STLS now\r\n") == (b"-ERR Unexpected argument.\r\n", [])
    with pytest.raises(RuntimeError):
        client().tls_started()


# -------------------------------------------------------------- AUTH PLAIN

def test_auth_plain_initial_response():
    assert bytewise(client, b"AUTH PLAIN " + plain("", "bob", "pw") + b"\r\n") == (
        b"", [Authenticate("bob", "pw", mechanism="PLAIN")])
    # another authzid is refused (tests/unit/test_sasl_authzid.py), nothing routed
    assert run(client(), b"auth plain " + plain("admin", "bob", "pw") + b"\r\n") == (
        b"-ERR [AUTH] Authorization as another user is not allowed.\r\n", [])


def test_auth_plain_continuation():
    c = client()
    assert run(c, b"AUTH PLAIN\r\n") == (b"+ \r\n", [])
    assert run(c, plain("", "bob", "p w") + b"\r\n") == (
        b"", [Authenticate("bob", "p w", mechanism="PLAIN")])


def test_auth_cancel_bad_data_and_mechanisms():
    c = client()
    assert run(c, b"AUTH PLAIN\r\n*\r\n") == (b"+ \r\n-ERR Authentication cancelled.\r\n", [])
    assert run(c, b"AUTH PLAIN !!!!\r\n") == (b"-ERR Invalid base64 data.\r\n", [])
    assert run(c, b"AUTH PLAIN =\r\n") == (b"-ERR Invalid SASL PLAIN message.\r\n", [])
    assert run(c, b"AUTH PLAIN " + plain("", "bob", "a\r\nb") + b"\r\n") == (
        b"-ERR Password contains NUL, CR or LF.\r\n", [])
    assert run(c, b"AUTH CRAM-MD5\r\n") == (b"-ERR Unsupported authentication mechanism.\r\n", [])
    assert run(c, b"AUTH\r\n") == (b"+OK\r\nPLAIN\r\n.\r\n", [])
    no_sasl = client(dataclasses.replace(OFF_LIMITS, sasl_plain=False))
    assert run(no_sasl, b"AUTH\r\nAUTH PLAIN =\r\n") == (
        b"+OK\r\n.\r\n-ERR Unsupported authentication mechanism.\r\n", [])


def test_auth_response_line_is_bounded():
    c = client(dataclasses.replace(OFF_LIMITS, max_line=20))
    assert run(c, b"AUTH PLAIN\r\n" + b"A" * 40) == (
        b"+ \r\n-ERR Line too long.\r\n", [Close("line too long")])


# ------------------------------------------------------------ auth results

def test_auth_succeeded_passes_the_backend_reply_and_leftover():
    c = client()
    assert pending(c, b"USER bob\r\nPASS pw\r\nSTAT\r\nLIST") == Authenticate(
        "bob", "pw", mechanism="USER")
    assert c.feed(b" 1\r\n") == []
    assert c.auth_succeeded(b"+OK Logged in.") == ([Send(b"+OK Logged in.\r\n")],
                                                   b"STAT\r\nLIST 1\r\n")
    with pytest.raises(RuntimeError):
        c.feed(b"x")


def test_auth_failed_resumes_pipelined_commands():
    c = client()
    pending(c, b"USER bob\r\nPASS bad\r\nUSER bob\r\nPASS good\r\nSTAT\r\n")
    assert split(c.auth_failed(temporary=False)) == (
        FAILED + b"+OK\r\n", [Authenticate("bob", "good", mechanism="USER")])
    assert c.auth_succeeded(b"+OK Logged in.")[1] == b"STAT\r\n"


def test_auth_failed_temporary_and_text():
    c = client()
    pending(c, b"USER bob\r\nPASS pw\r\n")
    assert c.auth_failed(temporary=True) == [
        Send(b"-ERR [SYS/TEMP] Temporary failure, try again later.\r\n")]
    pending(c, b"USER bob\r\nPASS pw\r\n")
    assert c.auth_failed(temporary=False, text="Nope\r\n+OK") == [
        Send(b"-ERR [AUTH] Nope  +OK\r\n")]


def test_too_many_failures_close():
    c = client(dataclasses.replace(OFF_LIMITS, max_auth_failures=2))
    pending(c, b"USER bob\r\nPASS a\r\n")
    assert c.auth_failed(temporary=False) == [Send(FAILED)]
    pending(c, b"USER bob\r\nPASS b\r\n")
    assert c.auth_failed(temporary=True) != []           # does not count
    pending(c, b"AUTH PLAIN " + plain("", "bob", "c") + b"\r\nNOOP\r\n")
    assert c.auth_failed(temporary=False) == [Send(FAILED),
                                              Close("too many authentication failures")]
    assert c.feed(b"NOOP\r\n") == []


def test_pipelining_too_much_during_auth_closes():
    c = client(dataclasses.replace(OFF_LIMITS, max_line=20, max_literal=10))
    pending(c, b"USER bob\r\nPASS pw\r\n" + b"x" * 30)
    assert c.feed(b"x") == [Send(b"-ERR Too much data sent during authentication.\r\n"),
                            Close("pipelined too much")]


def test_throttled():
    c = client()
    pending(c, b"USER bob\r\nPASS pw\r\n")
    assert c.throttled("Login rejected for this user") == [
        Send(b"-ERR Login rejected for this user\r\n"), Close("throttled")]
    assert client().throttled("Login rejected from this IP") == [
        Send(b"-ERR Login rejected from this IP\r\n"), Close("throttled")]


def test_auth_answers_out_of_turn_are_bugs():
    c = client()
    with pytest.raises(RuntimeError):
        c.auth_failed(temporary=False)
    with pytest.raises(RuntimeError):
        c.auth_succeeded(b"+OK")


def test_password_not_in_repr():
    event = pending(client(), b"USER bob\r\nPASS hunter2secret\r\n")
    assert "hunter2secret" not in repr(event)


def test_whole_session_byte_by_byte():
    transcript = (b"CAPA\r\nNOOP\r\nUSER bob\r\nPASS bad pw\r\nAUTH PLAIN\r\n*\r\n"
                  b"AUTH PLAIN\r\n" + plain("", "bob", "pw") + b"\r\nSTAT\r\n")
    assert bytewise(client, transcript) == (
        capa(*BASE, "SASL PLAIN") + b"+OK\r\n+OK\r\n",
        [Authenticate("bob", "bad pw", mechanism="USER")])


# ----------------------------------------------------------- backend login

def backend(username="bob", password="secret", **kw) -> Pop3BackendLogin:
    args = dict(client_ip="203.0.113.9", client_port=51000, local_ip="10.0.0.5",
                local_port=110)
    args.update(kw)
    return Pop3BackendLogin(username, password, **args)


GREETING = b"+OK Dovecot ready.\r\n"
AUTH_PLAIN = b"AUTH PLAIN " + plain("", "bob", "secret") + b"\r\n"


def test_backend_xoip_then_auth_plain_byte_by_byte():
    data = (GREETING + capa("TOP", "XOIP", "XCLIENT", "SASL PLAIN LOGIN") + b"+OK\r\n"
            + b"+OK Logged in.\r\n")
    assert login_bytewise(backend, data) == (
        b"CAPA\r\nXOIP 203.0.113.9\r\n" + AUTH_PLAIN, [LoginOK(b"+OK Logged in.")], b"")


def test_backend_step_by_step_with_xclient():
    b = backend()
    assert run(b, GREETING) == (b"CAPA\r\n", [])
    assert run(b, capa("XCLIENT", "SASL PLAIN")) == (
        b"XCLIENT ADDR=203.0.113.9 PORT=51000\r\n", [])
    # Dovecot refuses XCLIENT from untrusted networks: the login goes on.
    assert run(b, b"-ERR [XCLIENT] You are not from trusted IP\r\n") == (AUTH_PLAIN, [])
    assert run(b, b"+OK Logged in.\r\nextra") == (b"", [LoginOK(b"+OK Logged in.")])
    assert b.leftover() == b"extra"
    with pytest.raises(RuntimeError):
        b.feed(b"x")


def test_backend_learns_the_capabilities_and_skips_capa_when_given_them():
    first = backend()
    run(first, GREETING)
    assert first.learned is None
    run(first, capa("TOP", "SASL PLAIN LOGIN"))
    assert first.learned == {b"TOP": [], b"SASL": [b"PLAIN", b"LOGIN"]}
    assert not first.remembered
    # The next login to that server: AUTH right after the greeting.
    again = backend(capabilities=first.learned)
    assert again.remembered
    assert run(again, GREETING) == (AUTH_PLAIN, [])
    assert run(again, b"+OK Logged in.\r\n") == (b"", [LoginOK(b"+OK Logged in.")])
    assert again.learned is None
    # Remembered XOIP and a server without SASL PLAIN are honoured as if just read.
    assert run(backend(capabilities={b"XOIP": []}), GREETING) == (b"XOIP 203.0.113.9\r\n", [])
    assert run(backend(capabilities={}, send_xoip=False), GREETING) == (b"USER bob\r\n", [])


def test_backend_without_capa_learns_that_too():
    b = backend()
    run(b, GREETING)
    run(b, b"-ERR Unknown command\r\n")
    assert b.learned == {}


def test_backend_user_pass_when_no_sasl_plain():
    b = backend(send_xoip=False, password="pa ss")
    run(b, GREETING)
    assert run(b, capa("XOIP", "USER", "SASL LOGIN")) == (b"USER bob\r\n", [])
    assert run(b, b"+OK\r\n") == (b"PASS pa ss\r\n", [])
    assert run(b, b"+OK Logged in.\r\n") == (b"", [LoginOK(b"+OK Logged in.")])


def test_backend_without_capa():
    b = backend()
    run(b, GREETING)
    assert run(b, b"-ERR Unknown command\r\n") == (b"USER bob\r\n", [])


def test_backend_long_credentials_use_a_continuation():
    password = "p" * 300
    b = backend(password=password, send_xoip=False)
    run(b, GREETING)
    assert run(b, capa("SASL PLAIN")) == (b"AUTH PLAIN\r\n", [])
    assert run(b, b"+ \r\n") == (plain("", "bob", password) + b"\r\n", [])
    assert run(b, b"+OK Logged in.\r\n")[1] == [LoginOK(b"+OK Logged in.")]


@pytest.mark.parametrize("reply, temporary", [
    (b"-ERR [AUTH] Authentication failed.", False),
    (b"-ERR Authentication failed.", False),
    (b"-ERR [SYS/TEMP] Try later", True),
    (b"-ERR [IN-USE] Mailbox locked", True),
    (b"-ERR [LOGIN-DELAY] Too soon", True),
])
def test_backend_rejected(reply, temporary):
    b = backend()
    run(b, GREETING, capa("SASL PLAIN"))
    assert run(b, reply + b"\r\n") == (b"", [LoginRejected(reply, temporary=temporary)])


def test_backend_user_rejected():
    b = backend()
    run(b, GREETING, capa())
    assert run(b, b"-ERR [AUTH] No such user\r\n") == (
        b"", [LoginRejected(b"-ERR [AUTH] No such user")])


@pytest.mark.parametrize("data, reason", [
    (b"-ERR Too many connections\r\n",
     "unexpected greeting from backend: -ERR Too many connections"),
    (b"* OK IMAP ready\r\n", "unexpected greeting from backend: * OK IMAP ready"),
    (GREETING + b"hello\r\n", "unexpected reply to CAPA: hello"),
    (GREETING + capa("SASL PLAIN") + b"+ \r\n", "unexpected reply to login: +"),
    (GREETING + capa("XOIP") + b"what\r\n", "unexpected reply to XOIP/XCLIENT: what"),
    (b"+OK " + b"x" * 70000, "backend sent a line longer than 64 KiB"),
])
def test_backend_failures(data, reason):
    assert run(backend(), data)[1] == [BackendFailed(reason)]


def test_backend_client_ip_cannot_inject():
    b = backend(client_ip="1.2.3.4\r\nQUIT")
    run(b, GREETING)
    assert run(b, capa("XOIP")) == (b"XOIP 1.2.3.4\r\n", [])


def test_backend_refuses_credentials_that_could_inject():
    with pytest.raises(ValueError):
        backend(username="bob\r\nQUIT")
    with pytest.raises(ValueError) as info:
        backend(password="pw\r\nQUIT")
    assert "QUIT" not in str(info.value)
    assert "secret" not in repr(backend())
