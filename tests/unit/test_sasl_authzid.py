"""L6 (security review): SASL PLAIN with an authorization identity other than the
authentication identity is refused (RFC 4616 §2), not silently turned into a login as
oneself. The proxy supports no delegation: IMAP answers NO [AUTHORIZATIONFAILED]
(RFC 5530), POP3 -ERR [AUTH] (RFC 3206); nothing is routed, nothing reaches a mailbox
server. An authzid equal to the authcid (several clients send one) is no delegation.
Transcripts fed at once and byte by byte.
"""
from __future__ import annotations

import base64

import pytest

from carbotui.protocols.events import Authenticate, MailLimits
from carbotui.protocols.imap import ImapClientSide
from carbotui.protocols.pop3 import Pop3ClientSide
from carbotui.protocols.sasl import AuthDataError, AuthzidRefused, decode_plain

from tests.support.transcripts import bytewise, run

LIMITS = MailLimits(starttls="off")
REVIEW = ("user02@demo.test", "user01@demo.test", "demo-pass")   # the review's input


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def imap() -> ImapClientSide:
    return ImapClientSide(LIMITS, tls=True)


def pop3() -> Pop3ClientSide:
    return Pop3ClientSide(LIMITS, tls=True)


def test_decode_plain_refuses_another_authzid():
    with pytest.raises(AuthzidRefused) as e:
        decode_plain(base64.b64decode(plain(*REVIEW)))
    assert isinstance(e.value, AuthDataError) and "demo-pass" not in str(e.value)
    assert decode_plain(b"user01\0user01\0pw").authzid == ""
    assert decode_plain(b"\0user01\0pw").authzid == ""


def test_imap_authenticate_with_another_authzid_is_refused():
    sent, events = bytewise(imap, b"a AUTHENTICATE PLAIN " + plain(*REVIEW) + b"\r\n"
                                  b"b NOOP\r\n")
    assert sent == (b"a NO [AUTHORIZATIONFAILED] Authorization as another user is not "
                    b"allowed\r\nb OK NOOP completed.\r\n")
    assert events == []


def test_imap_continuation_form_too_and_the_connection_goes_on():
    c = imap()
    assert run(c, b"a AUTHENTICATE PLAIN\r\n") == (b"+ \r\n", [])
    sent, events = run(c, plain("admin", "bob", "pw") + b"\r\n")
    assert sent.startswith(b"a NO [AUTHORIZATIONFAILED]") and events == []
    assert run(c, b"b AUTHENTICATE PLAIN " + plain("bob", "bob", "pw") + b"\r\n")[1] == [
        Authenticate("bob", "pw", "", mechanism="PLAIN")]


def test_pop3_auth_with_another_authzid_is_refused():
    sent, events = bytewise(pop3, b"AUTH PLAIN " + plain(*REVIEW) + b"\r\nNOOP\r\n")
    assert sent == (b"-ERR [AUTH] Authorization as another user is not allowed.\r\n"
                    b"+OK\r\n")
    assert events == []


def test_pop3_continuation_form_too():
    c = pop3()
    assert run(c, b"AUTH PLAIN\r\n") == (b"+ \r\n", [])
    sent, events = run(c, plain("admin", "bob", "pw") + b"\r\n")
    assert sent.startswith(b"-ERR [AUTH] Authorization") and events == []
    assert run(c, b"AUTH PLAIN " + plain("bob", "bob", "pw") + b"\r\n")[1] == [
        Authenticate("bob", "pw", "", mechanism="PLAIN")]
