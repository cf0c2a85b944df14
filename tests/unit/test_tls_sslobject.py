"""carbotui/proxy/tls.py's DirectSSLObject: the SSLObject the event loop's TLS gets from
the proxy's contexts, whose read/write/pending are the C object's own methods (no
interpreted frame per TLS record). On uvloop (the workers' loop: the web listeners and
STARTTLS) and asyncio's own loop, against a real TLS client: the loop really got one, the
bytes arrive whole both ways (records of every size, large writes that fill the
transport, reads into uvloop's buffer), SNI still switches the context, and close_notify
still ends the session as before.
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from types import SimpleNamespace

import pytest

from carbotui.proxy import tls

# the fixtures of the tlsbio tests: a CA, two names' certificates, client contexts
from tests.unit.test_tlsbio import client_context, pki, run  # noqa: F401


def settings(pki):
    return SimpleNamespace(tls_min_version="TLSv1.2", tls_ciphers="HIGH:!aNULL:!MD5",
                           tls_certificate=pki / "imap.test.crt",
                           tls_private_key=pki / "imap.test.key", web=SimpleNamespace(h2=True))


class Echo(asyncio.Protocol):
    """Sends back what it gets, hashed in order; remembers its ssl_object."""

    def __init__(self):
        self.sslobj = None
        self.digest = hashlib.sha256()
        self.count = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.sslobj = transport.get_extra_info("ssl_object")

    def data_received(self, data):
        self.digest.update(data)
        self.count += len(data)
        self.transport.write(data)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


def client(pki, port, payload: bytes, server_name="imap.test") -> tuple[bytes, str]:
    """Sends ``payload`` in pieces of growing size, reads each back, ends with
    close_notify. -> (what came back, the peer certificate's subject name)."""
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as s:
        subject = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
        got = bytearray()
        at, size = 0, 1
        while at < len(payload):
            # one thread per TLS socket: send a piece, read its echo back
            s.sendall(payload[at:at + size])
            at, size = min(at + size, len(payload)), min(size * 3, 200_000)
            while len(got) < at:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got.extend(chunk)
        s.unwrap()
    return bytes(got), subject


def test_the_loop_gets_the_direct_object_and_bytes_arrive_whole(pki, run):
    payload = hashlib.sha256(b"seed").digest() * 60_000          # 1.9 MB, odd pieces

    async def main():
        contexts = tls.TlsContexts(settings(pki))
        ctx = contexts.for_listener("https")
        assert ctx.sslobject_class is tls.DirectSSLObject
        echo = []
        server = await asyncio.get_running_loop().create_server(
            lambda: echo.append(Echo()) or echo[-1], "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        got, subject = await asyncio.to_thread(client, pki, port, payload)
        await asyncio.wait_for(echo[0].lost, 10)
        server.close()
        return echo[0], got, subject

    side, got, subject = run(main())
    sslobj = side.sslobj
    assert isinstance(sslobj, tls.DirectSSLObject) and isinstance(sslobj, ssl.SSLObject)
    # the C object's own methods, not ssl.SSLObject's Python ones
    for name in ("read", "write", "pending"):
        method = getattr(sslobj, name)
        assert method.__self__ is sslobj._sslobj and not hasattr(method, "__code__")
    assert side.count == len(payload) and side.digest.digest() == hashlib.sha256(payload).digest()
    assert got == payload and subject == "imap.test"
    assert sslobj.version() in ("TLSv1.2", "TLSv1.3")


def test_sni_still_switches_the_context(pki, run):
    async def main():
        s = settings(pki)
        contexts = tls.TlsContexts(s)
        contexts.load(s, {"other.test": (pki / "other.test.crt", pki / "other.test.key")})
        assert contexts.web_by_name["other.test"].sslobject_class is tls.DirectSSLObject
        echo = []
        server = await asyncio.get_running_loop().create_server(
            lambda: echo.append(Echo()) or echo[-1], "127.0.0.1", 0,
            ssl=contexts.for_listener("https"))
        port = server.sockets[0].getsockname()[1]
        got, subject = await asyncio.to_thread(client, pki, port, b"hello\r\n", "other.test")
        await asyncio.wait_for(echo[0].lost, 10)
        server.close()
        return got, subject, echo[0].sslobj

    got, subject, sslobj = run(main())
    assert (got, subject) == (b"hello\r\n", "other.test")
    assert sslobj.selected_alpn_protocol() is None        # the client offered none


def test_the_sni_callback_is_set_only_while_a_name_has_a_certificate(pki):
    s = settings(pki)
    contexts = tls.TlsContexts(s)
    assert contexts.for_listener("imaps").sni_callback is None
    assert contexts.for_listener("https").sni_callback is None
    contexts.load(s, {"other.test": (pki / "other.test.crt", pki / "other.test.key")})
    assert contexts.for_listener("imaps").sni_callback is not None
    assert contexts.for_listener("https").sni_callback is not None
    contexts.load(s, {})                                   # the last virtual host removed
    assert contexts.for_listener("imaps").sni_callback is None
    assert contexts.for_listener("https").sni_callback is None


def test_upstream_context_uses_it_too(pki):
    ctx = tls.upstream_context(str(pki / "ca.crt"))
    assert ctx.sslobject_class is tls.DirectSSLObject and ctx.verify_mode == ssl.CERT_REQUIRED
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="imap.test")
    assert isinstance(obj, tls.DirectSSLObject) and obj.pending() == 0
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()                                  # the ClientHello is written
    assert out.pending > 0
    with pytest.raises(ssl.SSLWantReadError):
        obj.read(1024)                                      # the C read, same error

