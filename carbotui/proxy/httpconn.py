"""An HTTP connection as a Protocol that queues parser events for a coroutine.

Used on both sides of the web proxy: the client connection (RequestParser)
and each upstream connection (ResponseParser). Reading pauses while events
pile up or the parser holds unparsed bytes (pipelining, a paused parser), so
a fast sender can't make the proxy buffer without bound: the cap is on queued
*bytes* (one read can be 256 KiB under uvloop, so counting events alone let 32
of them hold 8 MB). Writing honours the transport's pause_writing/resume_writing
through ``drain()``, which with a send timeout gives up on a peer that accepts
nothing for that long (nginx's send_timeout).
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

from carbotui.protocols import http11
from carbotui.proxy.timers import for_loop

try:                         # where setup.py compiles this module (mypyc brings it)
    from mypy_extensions import mypyc_attr
except ImportError:          # pure Python: the decorator means nothing
    def mypyc_attr(*_args: Any, **_kwargs: Any) -> Any:  # type: ignore[misc]
        return lambda cls: cls

MAX_QUEUED_EVENTS: Final = 32
MAX_QUEUED_BYTES: Final = 256 * 1024    # body bytes in queued Data events
MAX_BUFFERED: Final = 256 * 1024


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


class SendTimeout(Exception):
    """The peer accepted no data for the send timeout (it stopped reading)."""


# Compiled by mypyc (setup.py); web.WebSession and tests subclass it in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class HttpConnection(asyncio.Protocol):
    def __init__(self, parser: Any) -> None:
        self.parser: Any = parser
        self.transport: Any = None       # the asyncio.Transport, once connected
        self.events: deque = deque()
        self.closed = False
        self.eof = False
        self.splice: Any = None          # set after an upgrade: raw bytes from then on
        self.on_splice_data: Any = None
        self._waiter: asyncio.Future | None = None
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._write_ready = True          # _writable's state, read natively (drain, h2conn)
        self._want_bytes = False         # wait_readable(): wake on any byte
        self.queued = 0                  # bytes in queued Data events
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
            _queue(self, events)
            _wake(self)
        elif self._want_bytes:
            _wake(self)
        if (self.queued > MAX_QUEUED_BYTES or len(self.events) > MAX_QUEUED_EVENTS
                or self.parser.buffered > MAX_BUFFERED):
            _pause(self)

    def eof_received(self):
        self.eof = True
        _queue(self, self.parser.feed_eof())
        _wake(self)
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._write_ready = True
        self._writable.set()             # let a blocked drain() see the close
        _wake(self)
        if self.splice is not None:
            self.splice.close("peer closed")

    def pause_writing(self) -> None:
        self._write_ready = False
        self._writable.clear()
        if self.splice is not None:
            self.splice.write_paused(self.transport)

    def resume_writing(self) -> None:
        self._write_ready = True
        self._writable.set()
        if self.splice is not None:
            self.splice.write_resumed(self.transport)

    # -- for the coroutine --------------------------------------------------
    # The methods delegate to module functions, which this module's own code calls:
    # compiled, a method call on an instance of a Python subclass (WebSession) goes
    # through a Python lookup, a module function is a direct call.
    def _queue(self, events) -> None:
        _queue(self, events)

    def _wake(self) -> None:
        _wake(self)

    def _pause(self) -> None:
        _pause(self)

    def _maybe_resume(self) -> None:
        _maybe_resume(self)

    async def _wait(self, timeout: float) -> None:
        """Until _wake() (or the close) resolves ``_waiter``; TimeoutError after
        ``timeout``. One future and one timer: what ``asyncio.wait_for`` costs without
        its extra future, callbacks and task bookkeeping (a wait per request)."""
        await _wait(self, timeout)

    async def next_event(self, timeout: float):
        """The next parser event; None when the peer has gone. Raises TimeoutError."""
        while not self.events:
            if self.closed or self.eof:
                return None
            _maybe_resume(self)
            await _wait(self, timeout)
        event = self.events.popleft()
        if type(event) is http11.Data:
            self.queued -= len(event.data)
        _maybe_resume(self)
        return event

    def next_ready(self, kind):
        """The next event if one of type ``kind`` is queued already, else None (no
        wait): what can go out together with what was just taken."""
        events = self.events
        if not events or type(events[0]) is not kind:
            return None
        event = events.popleft()
        if kind is http11.Data:
            self.queued -= len(event.data)
        _maybe_resume(self)
        return event

    async def wait_readable(self, timeout: float) -> None:
        """Until the peer has sent anything at all (a first byte of the next head), an
        event is queued, or the peer went away. Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.events or self.parser.buffered or self.closed or self.eof):
            _maybe_resume(self)
            self._want_bytes = True
            try:
                await _wait(self, deadline - loop.time())
            finally:
                self._want_bytes = False

    def start_next(self, *args) -> None:
        """Parse the next message on this connection (keep-alive)."""
        _queue(self, self.parser.start_next(*args))
        _maybe_resume(self)

    def write(self, data: bytes) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self, send_timeout: float | None = None) -> None:
        """Until the transport takes more. With ``send_timeout``: raise SendTimeout
        when the peer accepted nothing at all for that long; like nginx's
        send_timeout it bounds the time between two successful writes, not the
        whole response, so a slow reader that keeps reading is not cut."""
        if self._write_ready:
            return
        if send_timeout is None:
            await self._writable.wait()
            return
        pending = self.transport.get_write_buffer_size()
        while not self._write_ready:
            try:
                await asyncio.wait_for(self._writable.wait(), send_timeout)
            except asyncio.TimeoutError:
                now = self.transport.get_write_buffer_size()
                if now >= pending:
                    raise SendTimeout(f"peer accepted nothing for {send_timeout:g}s") from None
                pending = now

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        """Close without flushing: for a peer that stopped reading, close() would
        keep the socket until the buffer drains, which it never does."""
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    @property
    def reusable(self) -> bool:
        return not self.closed and not self.eof and self.transport is not None \
            and not self.transport.is_closing()


def _queue(conn: HttpConnection, events) -> None:
    for event in events:
        if type(event) is http11.Data:
            conn.queued += len(event.data)
    conn.events.extend(events)


def _wake(conn: HttpConnection) -> None:
    waiter = conn._waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _pause(conn: HttpConnection) -> None:
    if not conn._paused and conn.transport and not conn.transport.is_closing():
        conn._paused = True
        conn.transport.pause_reading()


def _maybe_resume(conn: HttpConnection) -> None:
    if (conn._paused and len(conn.events) <= MAX_QUEUED_EVENTS // 2
            and conn.queued <= MAX_QUEUED_BYTES // 2
            and conn.parser.buffered <= MAX_BUFFERED // 2 and not conn.closed):
        conn._paused = False
        conn.transport.resume_reading()


async def _wait(conn: HttpConnection, timeout: float) -> None:
    """HttpConnection._wait."""
    if timeout <= 0:
        raise asyncio.TimeoutError
    loop = asyncio.get_running_loop()
    conn._waiter = waiter = loop.create_future()
    timer = for_loop(loop).call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
        conn._waiter = None
