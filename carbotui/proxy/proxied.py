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
from carbotui.proxy import tlsbio

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices

log = logging.getLogger("carbotui.proxy.proxied")

PEEK = 16 + 65535          # the largest v2 header (signature+fixed part, then len bytes)
PARTIAL_RETRY = 0.01       # a header split over segments: look again shortly
ACCEPT_BATCH = 64          # accepts per readiness callback, then the loop's other work
ACCEPT_RETRY = 0.1         # after a failed accept (EMFILE): look again this much later


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


def _hang_up(conn: socket.socket) -> None:
    """Close now: the event-loop watchers sit on duplicates of the descriptor, closed a
    second later (read_header, ProxiedListener), and a close alone would end the
    connection, or the listening, only with the last descriptor. A health check refused
    while draining would wait that second, and HAProxy take the node out that much later."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass                       # the peer went first
    conn.close()


class ProxiedListener:
    """One PROXY-protocol listener: its accepts, and the connections still being set up
    (PROXY header, TLS handshake), which are no session yet. A drain closes it with
    ``close()``, then waits for those (``wait_closed()``): nothing it accepted is dropped.

    Accepts are synchronous, in the readiness callback (as uvloop's own servers do), not
    ``loop.sock_accept``: cancelling that at a drain can lose a connection (asyncio
    accepts it in a callback already queued, then cannot hand it to the cancelled
    future). The watcher is on a duplicate descriptor, as in read_header."""

    def __init__(self, services: SessionServices, sock: socket.socket, factory, ssl_ctx,
                 endpoint) -> None:
        self.services = services
        self.sock = sock
        self.factory = factory
        self.ssl_ctx = ssl_ctx
        self.endpoint = endpoint
        self.setting_up: set[asyncio.Task] = set()
        self._loop = asyncio.get_running_loop()
        self._watched = sock.dup()
        self._retry: asyncio.TimerHandle | None = None
        self._loop.add_reader(self._watched.fileno(), self._accept_ready)

    def _accept_ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:                 # e.g. out of file descriptors
                log.error("accept on %s failed: %s", self.endpoint, exc)
                # level-triggered: look again in a moment, not in a busy loop
                self._loop.remove_reader(self._watched.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY, self._resume)
                return
            self._set_up(conn, peer)

    def _resume(self) -> None:
        self._retry = None
        self._loop.add_reader(self._watched.fileno(), self._accept_ready)

    def _set_up(self, conn: socket.socket, peer) -> None:
        task = self._loop.create_task(
            _start(self.services, conn, peer, self.factory, self.ssl_ctx))
        self.setting_up.add(task)
        task.add_done_callback(self.setting_up.discard)

    def close(self) -> None:
        """Stop accepting. The connections the kernel completed meanwhile (the accept
        queue) are taken and served, not reset by the close: the balancer sent them
        before its health checks took this node out."""
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._watched.fileno())
        self._loop.call_later(1.0, self._watched.close)
        while True:
            try:
                conn, peer = self.sock.accept()     # non-blocking: the queue, then EAGAIN
            except OSError:
                break
            self._set_up(conn, peer)
        _hang_up(self.sock)      # listening ends now, though the watcher's duplicate lives on

    async def wait_closed(self) -> None:
        """After close(): until every connection it accepted is a session (which the
        drain waits for next) or gone."""
        while self.setting_up:
            await asyncio.wait(list(self.setting_up))


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
        _hang_up(conn)
        return
    if header.command == "LOCAL" and services.draining:
        # The balancer's health check: fail it, so it stops sending new clients,
        # while the clients it still sends meanwhile are served.
        _hang_up(conn)
        return
    # PROXY: the header's addresses; LOCAL (health checks) and UNKNOWN: the socket's.
    client, local = header.endpoints(peer[:2], conn.getsockname()[:2])
    try:
        _, protocol = await loop.connect_accepted_socket(
            lambda: factory(addresses=(client, local)), conn, ssl=ssl_ctx,
            ssl_handshake_timeout=10 if ssl_ctx else None)
    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
        log.info("session from %s (via %s) ended during set-up: %s", client[0], peer[0], exc)
        conn.close()
        return
    if isinstance(protocol, tlsbio.TlsServer):
        # IMAPS, POP3S: the session exists once carbotui's own TLS has shaken hands
        # (uvloop's TLS, on the web ports, did so before connect_accepted_socket returned).
        settled = protocol.handshake_done()
        if settled is not None:
            await settled
