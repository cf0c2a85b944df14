"""L6 against the running demo: the review's input, SASL PLAIN asking to act as user02
while authenticating as user01, is refused on IMAPS and POP3S instead of logging in
as user01 (it reached mbox1's INBOX before)."""
from __future__ import annotations

import base64
import socket

import pytest

from tests.stack.conftest import HOST, PASSWORD, PORTS, tls_context

pytestmark = pytest.mark.usefixtures("proxy_up")

DELEGATION = base64.b64encode(f"user02@demo.test\0user01@demo.test\0{PASSWORD}".encode())
SELF = base64.b64encode(f"user01@demo.test\0user01@demo.test\0{PASSWORD}".encode())


def session(kind: str):
    raw = socket.create_connection((HOST, PORTS[kind]), timeout=15)
    sock = tls_context().wrap_socket(raw, server_hostname=HOST)
    f = sock.makefile("rb")
    assert f.readline()[:3] in (b"* O", b"+OK")
    return sock, f


@pytest.mark.parametrize("kind, delegate, again, refused, accepted", [
    ("imaps", b"a AUTHENTICATE PLAIN ", b"b AUTHENTICATE PLAIN ", b"a NO [AUTHORIZATIONFAILED]",
     b"b OK"),
    ("pop3s", b"AUTH PLAIN ", b"AUTH PLAIN ", b"-ERR [AUTH] Authorization", b"+OK"),
])
def test_authzid_of_another_user_is_refused_and_oneself_still_works(kind, delegate, again,
                                                                    refused, accepted):
    sock, f = session(kind)
    sock.sendall(delegate + DELEGATION + b"\r\n")
    assert f.readline().startswith(refused)
    sock.sendall(again + SELF + b"\r\n")
    assert f.readline().startswith(accepted)
    sock.close()
