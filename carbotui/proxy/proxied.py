"""Listeners behind HAProxy: a PROXY v1/v2 header first, then the protocol.

The header is accepted only from ``proxy_protocol.trusted`` networks (anything
else is dropped unanswered, as the spec asks), must arrive whole within
``proxy_protocol.timeout`` seconds, and nothing is sent before it is parsed
(IMAP and POP3 servers speak first). It is read with MSG_PEEK and then
consumed to the byte, so the bytes after it (a TLS ClientHello on 993, the
client's first command on 143) stay in the socket for the session proper.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from carbotui.protocols import proxyproto

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices

log = logging.getLogger("carbotui.proxy.proxied")

PEEK = 16 + 65535          # the largest v2 header (signature+fixed part, then len bytes)
PARTIAL_RETRY = 0.01       # a header split over segments: look again shortly


class HeaderRefused(Exception):
    pass


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


async def read_header(sock: socket.socket) -> proxyproto.ProxyHeader:
    """Peek until a whole header is there, then consume exactly it.

    The event-loop watcher goes on a duplicate descriptor, closed a moment later:
    libuv tears a watcher down lazily, and one left on the session's own
    descriptor would unregister the session's reads (a stalled TLS handshake)."""
    loop = asyncio.get_running_loop()
    watched = sock.dup()
    try:
        return await _peek_header(loop, sock, watched)
    finally:
        loop.call_later(1.0, watched.close)


async def _peek_header(loop, sock: socket.socket, watched: socket.socket):
    while True:
        await _readable(loop, watched)
        data = sock.recv(PEEK, socket.MSG_PEEK)
        if not data:
            raise HeaderRefused("closed before a complete PROXY header")
        result = proxyproto.ProxyHeaderParser(PEEK).feed(data)
        if isinstance(result, proxyproto.ProxyError):
            raise HeaderRefused(result.reason)
        if result is not None:
            sock.recv(result.length)            # exactly the header, nothing after it
            return result
        await asyncio.sleep(PARTIAL_RETRY)


async def serve(services: SessionServices, listen_sock: socket.socket, factory, ssl_ctx,
                endpoint) -> None:
    """Accept loop for one PROXY-protocol listener (cancelled on drain)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, peer = await loop.sock_accept(listen_sock)
        except OSError as exc:                 # e.g. out of file descriptors
            log.error("accept on %s failed: %s", endpoint, exc)
            await asyncio.sleep(0.1)
            continue
        loop.create_task(_start(services, conn, peer, factory, ssl_ctx))


async def _start(services: SessionServices, conn: socket.socket, peer, factory, ssl_ctx) -> None:
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    settings = services.settings
    if not proxyproto.trusted(peer[0], settings.proxy_trusted):
        services.stats.proxy_refused += 1
        conn.close()               # never answer an untrusted peer on a PROXY port
        return
    try:
        header = await asyncio.wait_for(read_header(conn), settings.proxy_timeout)
    except (HeaderRefused, asyncio.TimeoutError, OSError) as exc:
        services.stats.proxy_refused += 1
        log.info("PROXY header from %s refused: %s", peer[0],
                 "timed out" if isinstance(exc, asyncio.TimeoutError) else exc)
        conn.close()
        return
    if header.command == "LOCAL" and services.draining:
        # The balancer's health check: fail it, so it stops sending new clients,
        # while the clients it still sends meanwhile are served.
        conn.close()
        return
    # PROXY: the header's addresses; LOCAL (health checks) and UNKNOWN: the socket's.
    client, local = header.endpoints(peer[:2], conn.getsockname()[:2])
    try:
        await loop.connect_accepted_socket(
            lambda: factory(addresses=(client, local)), conn, ssl=ssl_ctx,
            ssl_handshake_timeout=10 if ssl_ctx else None)
    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
        log.info("session from %s (via %s) ended during set-up: %s", client[0], peer[0], exc)
        conn.close()
