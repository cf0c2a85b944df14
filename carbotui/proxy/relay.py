"""The byte pump after login: client <-> mailbox server, with backpressure.

Protocol-level (no streams, no per-chunk tasks): each side's data_received
writes straight into the other transport. When a transport's write buffer
passes its high-water mark asyncio calls pause_writing() on *its* protocol,
and we stop reading from the *other* side until resume_writing(). So a slow
reader never makes the proxy buffer more than a few hundred KiB per session.

Idle time is checked by one lazy timer per session that is only re-armed
when it fires, so busy sessions cost nothing per chunk beyond a counter. An
owner that has a timer of its own (a mail session) passes own_timer=False and
calls check_idle() from it: one timer per session instead of two.

An IMAP session passes ``watch`` (workers/imapstream.ImapStream): it sees every chunk of
both directions and tells the session, when the mailbox server goes away, whether the
proxy may still add a line of its own. Nothing else is copied or kept per chunk.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Final

_monotonic: Final = time.monotonic


class SpliceEnd:
    """An asyncio protocol at one end of a Splice, once there is one: asyncio's flow
    control of its transport pauses and resumes reading the other end.

    A protocol by duck typing, not an asyncio.Protocol subclass: compiled by mypyc
    (setup.py), a native class over a Python base gets a __dict__ and weak references,
    and mypyc 2.4 crashes freeing one a weak reference points to. uvloop, asyncio's
    start_tls and tlsbio only call the protocol's methods (and take one without
    get_buffer for a plain, not buffered, protocol); its subclasses define all six."""

    transport: Any = None          # asyncio.Transport, or tlsbio.TlsServer
    splice: Splice | None = None

    def pause_writing(self) -> None:
        splice = self.splice
        if splice is not None:
            splice.write_paused(self.transport)

    def resume_writing(self) -> None:
        splice = self.splice
        if splice is not None:
            splice.write_resumed(self.transport)


class Splice:
    __slots__ = ("client", "backend", "idle_timeout", "last", "bytes_in", "bytes_out",
                 "_timer", "_loop", "_on_close", "closed", "watch", "_watch_client", "_watch_server")

    client: Any
    backend: Any
    _on_close: Callable[[str], None] | None
    watch: Any
    _watch_client: Any
    _watch_server: Any
    _timer: Any

    def __init__(self, client: Any, backend: Any, *,
                 idle_timeout: float, on_close: Callable[[str], None],
                 loop: asyncio.AbstractEventLoop | None = None, own_timer: bool = True,
                 watch: Any = None):
        self.client = client
        self.backend = backend
        self.idle_timeout = idle_timeout
        self.last = time.monotonic()
        self.bytes_in = 0          # client -> server
        self.bytes_out = 0         # server -> client
        self.closed = False
        self._on_close = on_close
        self.watch = watch
        # the watch's methods, bound once; a watch may set from_server = None (POP3)
        self._watch_client = watch.from_client if watch is not None else None
        self._watch_server = watch.from_server if watch is not None else None
        self._loop = loop or asyncio.get_running_loop()
        self._timer = self._loop.call_later(idle_timeout, self._check_idle) if own_timer else None

    # -- data ---------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last = _monotonic()
        if self._watch_client is not None:
            self._watch_client(data)
        self.backend.write(data)

    def from_backend(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.last = _monotonic()
        if self._watch_server is not None:
            self._watch_server(data)
        self.client.write(data)

    # -- flow control -------------------------------------------------------
    # One side's send buffer is full: stop reading the other side until it drains.
    def write_paused(self, full: asyncio.Transport) -> None:
        other = self.backend if full is self.client else self.client
        if not other.is_closing():
            other.pause_reading()

    def write_resumed(self, full: asyncio.Transport) -> None:
        other = self.backend if full is self.client else self.client
        if not other.is_closing():
            other.resume_reading()

    # -- ending -------------------------------------------------------------
    def check_idle(self) -> float | None:
        """Close if idle for idle_timeout; else return the seconds until that could be."""
        idle = time.monotonic() - self.last
        if idle >= self.idle_timeout:
            self.close("idle timeout")
            return None
        return self.idle_timeout - idle

    def _check_idle(self) -> None:
        wait = self.check_idle()
        if wait is not None:
            self._timer = self._loop.call_later(wait, self._check_idle)

    def close(self, reason: str, *, farewell: bytes = b"") -> None:
        """Close both sides once; ``farewell`` goes to the client first."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if farewell and not self.client.is_closing():
            self.client.write(farewell)
        # close() flushes what is buffered; the peer's leftovers are dropped.
        self.client.close()
        self.backend.close()
        on_close, self._on_close = self._on_close, None    # no cycle through the session
        if on_close is not None:
            on_close(reason)
