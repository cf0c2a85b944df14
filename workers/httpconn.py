"""An HTTP connection as a Protocol that queues parser events for a coroutine.

Used on both sides of the web proxy: the client connection (RequestParser)
and each upstream connection (ResponseParser). Reading pauses while events
pile up or the parser holds unparsed bytes (pipelining, a paused parser), so
a fast sender can't make the proxy buffer without bound. Writing honours
the transport's pause_writing/resume_writing through ``drain()``.
"""
from __future__ import annotations

import asyncio
from collections import deque

from workers import http11

MAX_QUEUED_EVENTS = 32
MAX_BUFFERED = 256 * 1024


class HttpConnection(asyncio.Protocol):
    def __init__(self, parser):
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        self.events: deque = deque()
        self.closed = False
        self.eof = False
        self.splice = None               # set after an upgrade: raw bytes from then on
        self.on_splice_data = None
        self.on_pause_writing = None     # splice flow control, set with the splice
        self.on_resume_writing = None
        self._waiter: asyncio.Future | None = None
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.bytes_in = 0

    # -- Protocol -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.on_splice_data is not None:
            self.on_splice_data(data)
            return
        events = self.parser.feed(data)
        if events:
            self.events.extend(events)
            self._wake()
        if len(self.events) > MAX_QUEUED_EVENTS or self.parser.buffered > MAX_BUFFERED:
            self._pause()

    def eof_received(self):
        self.eof = True
        self.events.extend(self.parser.feed_eof())
        self._wake()
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._writable.set()             # let a blocked drain() see the close
        self._wake()
        if self.splice is not None:
            self.splice.close("peer closed")

    def pause_writing(self) -> None:
        self._writable.clear()
        if self.on_pause_writing is not None:
            self.on_pause_writing()

    def resume_writing(self) -> None:
        self._writable.set()
        if self.on_resume_writing is not None:
            self.on_resume_writing()

    # -- for the coroutine --------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        if (self._paused and len(self.events) <= MAX_QUEUED_EVENTS // 2
                and self.parser.buffered <= MAX_BUFFERED // 2 and not self.closed):
            self._paused = False
            self.transport.resume_reading()

    async def next_event(self, timeout: float):
        """The next parser event; None when the peer has gone. Raises TimeoutError."""
        while not self.events:
            if self.closed or self.eof:
                return None
            self._maybe_resume()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            finally:
                self._waiter = None
        event = self.events.popleft()
        self._maybe_resume()
        return event

    def start_next(self, *args) -> None:
        """Parse the next message on this connection (keep-alive)."""
        self.events.extend(self.parser.start_next(*args))
        self._maybe_resume()

    def write(self, data: bytes) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    @property
    def reusable(self) -> bool:
        return not self.closed and not self.eof and self.transport is not None \
            and not self.transport.is_closing()


def client_connection(max_header_bytes: int) -> HttpConnection:
    return HttpConnection(http11.RequestParser(max_header_bytes=max_header_bytes))
