"""The web session's glue (carbotui/proxy/web.py) on a real event loop with real sockets, against
upstreams that misbehave on purpose (a 101 to another protocol, 1xx hints, none at all),
which the demo web apps never do.

The session gets the worker's real SessionServices, with stand-ins for the router, the
throttle and the audit log; its upstream set points at a scripted server. Whole-stack
behaviour (LDAP, memcached, the demo web apps) is in tests/stack/test_web_hardening.py.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from carbotui.core.settings import MailSettings, WebSettings
from carbotui.backends.directory import MailServer
from carbotui.proxy import httpconn
from carbotui.protocols.http11 import RequestParser
from carbotui.proxy.context import SessionServices
from carbotui.proxy.web import WebSession

pytestmark = pytest.mark.timeout(30)


class AuditRecorder:
    def __init__(self):
        self.events = []

    def write(self, event):
        self.events.append(event)


class OpenThrottle:
    def exempt(self, ip):
        return False

    async def check_ip(self, proto, ip):
        return None

    def counts_users(self, ip):
        return False

    async def check_user(self, login, *, ip=None, account=""):
        return None

    async def count_user(self, login, *, success, ip=None, account=""):
        return None


class NoRoutes:
    async def route_mail(self, login, proto, local_ip):
        return None

    async def route_by_id(self, zimbra_id, proto, admin=False):
        return None


def stand_in_services(loop, upstream_port: int | None, **web) -> SessionServices:
    """The real context, its web upstreams pointing at ``upstream_port``, with stand-ins
    for the router, the throttle and the audit log."""
    settings = SimpleNamespace(web=WebSettings(**web), mail=MailSettings())
    services = SessionServices(settings=settings, loop=loop, router=NoRoutes(),
                               throttle=OpenThrottle(), audit=AuditRecorder())
    if upstream_port is not None:
        services.web_upstreams.update({"mbox9.demo.test": MailServer(
            "mbox9.demo.test", "127.0.0.1", {"http": upstream_port}, lookup_target=True)})
    return services


async def scripted_upstream(answer: bytes):
    """An upstream that answers every request head with ``answer`` and records the heads."""
    seen = []

    async def handle(reader, writer):
        try:
            while True:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def front(services, addresses=None):
    server = await services.loop.create_server(
        lambda: WebSession(services, "https", False, addresses), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def exchange(port: int, request: bytes) -> bytes:
    """Send, then read until the proxy closes (or 5 s of silence: then it kept waiting)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            data += chunk
    except asyncio.TimeoutError:
        data += b"<still open>"
    writer.close()
    return data


async def through_proxy(answer: bytes, *requests: bytes, addresses=None, **web):
    """A session in front of a ``scripted_upstream(answer)``; each request is sent on a
    connection of its own. Returns (the replies, the heads the upstream saw, the services)."""
    up, port, seen = await scripted_upstream(answer)
    services = stand_in_services(asyncio.get_running_loop(), port, **web)
    server, front_port = await front(services, addresses)
    replies = [await exchange(front_port, request) for request in requests]
    server.close()
    up.close()
    return replies, seen, services


WS = (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_a_101_to_another_protocol_is_not_spliced():
    # L5: the client asked for a WebSocket; the upstream switches to h2c. Spliced, the
    # client would get a raw HTTP/2 connection past every header rule.
    [reply], seen, _ = asyncio.run(through_proxy(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", WS))          # an HTTP/2 SETTINGS frame
    assert reply.startswith(b"HTTP/1.1 502 ") and b"Connection: close" in reply
    assert b"\x00\x00\x00\x04" not in reply
    assert b"Upgrade: websocket" in seen[0]


def test_an_h2c_upgrade_goes_upstream_as_plain_http():
    [reply], seen, _ = asyncio.run(through_proxy(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nConnection: close\r\n\r\n"))
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"ok")
    head = seen[0].lower()
    assert b"upgrade" not in head and b"http2-settings" not in head


def test_no_1xx_reaches_an_http10_client():
    # RFC 9110 §15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client.
    [old, new], _, _ = asyncio.run(through_proxy(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
    assert old.startswith(b"HTTP/1.1 200 ") and b"103" not in old
    assert new.startswith(b"HTTP/1.1 103 ")


def test_connection_close_after_an_error_page_is_honoured():
    # Informational: a 502 that says "Connection: close" used to be followed by the
    # answer to a pipelined request on the same connection.
    async def main():
        services = stand_in_services(asyncio.get_running_loop(), None)   # no upstream at all
        server, front_port = await front(services)
        reply = await exchange(front_port, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                                           b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await exchange(front_port, b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n")
        server.close()
        return reply, head
    reply, head = asyncio.run(main())
    assert reply.startswith(b"HTTP/1.1 502 ") and b"Connection: close" in reply
    assert reply.count(b"HTTP/1.1 ") == 1 and not reply.endswith(b"<still open>")
    # HEAD: the same head, no page after it (RFC 9110 §9.3.2)
    assert head.startswith(b"HTTP/1.1 502 ") and head.endswith(b"\r\n\r\n")


def test_forwarded_for_from_a_trusted_proxy_hop_is_extended_only_when_configured():
    def head(extend: bool) -> bytes:
        # as proxied.py creates it: the addresses from a trusted PROXY header
        _, seen, _ = asyncio.run(through_proxy(
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.1"
            b"\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n",
            addresses=(("203.0.113.5", 4000), ("127.0.0.1", 443)), extend_forwarded_for=extend))
        return seen[0]
    assert b"X-Forwarded-For: 203.0.113.5\r\n" in head(False)
    extended = head(True)
    assert b"X-Forwarded-For: 198.51.100.1, 203.0.113.5\r\n" in extended
    assert b"X-Real-IP: 203.0.113.5\r\n" in extended and b"6.6.6.6" not in extended


def test_user_agent_controls_never_reach_the_audit_log():
    body = b"username=someone%40demo.test&password=x"
    _, _, services = asyncio.run(through_proxy(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: h\r\nUser-Agent: a\x9b31mb\x85c"
        b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
    [event] = services.audit.events
    assert event.account == "someone@demo.test" and event.user_agent == "a 31mb c"


# ----------------------------------------------------------- queued bytes (L2)

class FakeTransport:
    def __init__(self, reader=None):
        self.paused = False
        self.buffer = 10
        self.reader = reader       # called on every look at the buffer: the peer reads

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def is_closing(self):
        return False

    def get_write_buffer_size(self):
        if self.reader is not None:
            self.reader(self)
        return self.buffer


def test_queued_body_bytes_are_capped_not_events():
    # Two reads of 256 KiB are two events, far below the event cap; before, 32 such
    # events (8 MB) could queue up per connection.
    conn = httpconn.HttpConnection(RequestParser())
    conn.connection_made(FakeTransport())
    conn.data_received(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10000000\r\n\r\n")
    piece = b"x" * (256 * 1024)
    conn.data_received(piece)
    assert not conn.transport.paused
    conn.data_received(piece)
    assert conn.transport.paused and len(conn.events) == 3
    assert conn.queued == 2 * len(piece)

    async def take():
        return [type(await conn.next_event(1)).__name__ for _ in range(3)]
    assert asyncio.run(take()) == ["Request", "Data", "Data"]
    assert conn.queued == 0 and not conn.transport.paused


def test_drain_gives_up_on_a_peer_that_accepts_nothing_but_not_on_a_slow_one():
    # Like nginx's send_timeout: the time between two writes that make progress, not
    # the whole transfer. The "slow reader" takes one byte per look, then drains.
    def slow_reader(transport):
        transport.buffer -= 1
        if transport.buffer == 5:
            conn.resume_writing()

    async def main(reader):
        transport = FakeTransport(reader)
        conn.connection_made(transport)
        conn.pause_writing()
        try:
            await conn.drain(0.01)
        except httpconn.SendTimeout:
            return "cut"
        return "drained"
    conn = httpconn.HttpConnection(RequestParser())
    assert asyncio.run(main(None)) == "cut"
    conn = httpconn.HttpConnection(RequestParser())
    assert asyncio.run(main(slow_reader)) == "drained"
