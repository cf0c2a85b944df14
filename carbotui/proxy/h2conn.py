"""HTTP/2 (RFC 9113) on the HTTPS and admin listeners, chosen by ALPN ``h2``.

The h2 package is the state machine; this is its glue. The HTTPS and admin
listeners' TLS context offers ``h2`` and ``http/1.1`` (carbotui/proxy/tls.py);
``hand_over`` (SessionServices.h2_hand_over, called by WebSession.connection_made)
gives a connection whose handshake picked ``h2`` to an ``H2Session``; every other one
(``http/1.1``, no ALPN) stays on the HTTP/1.1 path (WebSession) untouched.

Each stream is an ``H2Stream``: a WebSession whose client side is that stream, so a
request goes through exactly the HTTP/1.1 pipeline (``WebSession._handle``: Host
check, login bodies read whole, user throttle, routing, forwarding headers, the
upstream pool and its keep-alive, audit, access log). The pipeline writes an
HTTP/1.1 response; the stream parses it back with the project's own
``http11.ResponseParser`` and sends HEADERS (``h2rules.response_headers``: no
hop-by-hop fields) and DATA. The request body goes the other way as the events
the pipeline reads from an HTTP/1.1 client.

Flow control both ways: a stream buffers at most ``STREAM_BUFFER`` bytes of
response, sent only as the client's windows allow and only while the socket takes
more, so a slow client slows the upstream read (``drain``) instead of filling
memory; request DATA is acknowledged (WINDOW_UPDATE) only after the pipeline has
passed the previous piece to the upstream and drained it. The connection window
we grant is ``CONNECTION_WINDOW``, the per-stream one the default 65,535.

Limits (so one client cannot take the worker): ``h2_max_concurrent_streams``
(SETTINGS_MAX_CONCURRENT_STREAMS; h2 ends a connection that opens more with
GOAWAY(PROTOCOL_ERROR), RFC 9113 §5.1.2/§5.4.1), ``h2_max_header_list_size``
(advertised; a larger list gets 431, one over twice it GOAWAY(ENHANCE_YOUR_CALM) from
the HPACK decoder, as does a header block of HEADERS+CONTINUATION over twice it:
``h2rules.FrameGuard``), a token bucket on resets, pings, settings and empty
frames (GOAWAY(ENHANCE_YOUR_CALM)), any protocol error: GOAWAY with its code and
close. Timeouts as for HTTP/1.1: the first request within ``header_timeout``, a
header block within ``header_timeout`` of its first frame, ``keepalive_timeout``
without a stream, ``send_timeout`` for a client that accepts nothing. Reading
stops while the socket's write buffer is full (a PING or SETTINGS flood from a
client that does not read cannot queue answers without bound). Extended CONNECT
(RFC 8441) is not offered: WebSockets use HTTP/1.1.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from carbotui.protocols import h2rules, http11
from carbotui.proxy.httpconn import SendTimeout
from carbotui.proxy.web import WebSession, error_page

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices

log = logging.getLogger("carbotui.proxy.h2conn")

STREAM_BUFFER = 64 * 1024          # response bytes held per stream before drain() waits
CONNECTION_WINDOW = 1024 * 1024    # request bytes in flight per connection (all streams)
EARLY_LIMIT = 64 * 1024            # bytes read before the connection is admitted
CLOSE_GRACE = 5.0                  # a closing connection's last frames: then it is aborted
Codes = h2.errors.ErrorCodes


def negotiated(transport) -> bool:
    """The TLS handshake picked HTTP/2 by ALPN."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


def header_list_limit(web) -> int:
    return web.h2_max_header_list_size or web.max_header_bytes


def _abort(transport) -> None:
    try:
        transport.abort()
    except (OSError, RuntimeError):
        pass


class _StreamParser:
    """What the pipeline asks of a client's parser, for a stream: the connection
    persists (HTTP/2 has no Connection: close) and nothing is buffered."""
    keep_alive = True
    buffered = 0

    @staticmethod
    def take_remainder() -> bytes:
        return b""


def hand_over(session: WebSession, transport) -> bool:
    """WebSession.connection_made on the HTTPS and admin listeners: a connection whose
    TLS handshake picked ``h2`` becomes an H2Session (True); any other stays ``session``."""
    services = session.services
    if not (services.settings.web.h2 and negotiated(transport)):
        return False
    h2_session = H2Session(services, session.kind, session.addresses)
    transport.set_protocol(h2_session)
    h2_session.connection_made(transport)
    return True


class H2Session(WebSession):
    """One HTTP/2 client connection: frames in and out, limits, and its streams."""

    def __init__(self, services: SessionServices, kind: str, addresses=None):
        super().__init__(services, kind, True, addresses)
        self.state = "h2"
        web = services.settings.web
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True,
            normalize_inbound_headers=True, normalize_outbound_headers=True,
            # what we send was parsed by http11 and built by h2rules.response_headers
            # (lower-case names, no connection-specific fields): not checked twice
            validate_outbound_headers=False))
        self.max_header_list = header_list_limit(web)
        streams = web.h2_max_concurrent_streams
        # Advertised from the first SETTINGS frame on, and enforced at once (h2's own
        # defaults would otherwise hold until the client acknowledges).
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list,
        })
        # Between the advertised size and twice it a list is answered 431; past that
        # the decoder stops (a client that ignores the setting: HPACK bomb).
        self.h2.decoder.max_header_list_size = 2 * self.max_header_list
        loop = services.loop
        self.guard = h2rules.FrameGuard(max_header_block=2 * self.max_header_list,
                                        burst=2 * streams + 100, rate=max(10, streams),
                                        now=loop.time())
        self.streams: dict[int, H2Stream] = {}
        self.requests = 0
        self._ready = False               # admitted, preface sent
        self._early = bytearray()         # bytes that came before that
        self._ending = False              # GOAWAY sent: no new streams, close when idle
        self._lost = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._since = loop.time()         # last stream started or ended (idle clock)
        self._block_started = 0.0
        self._reading_paused = False
        self._write_due = False           # a _write_now is scheduled

    # -- lifecycle ----------------------------------------------------------
    async def _serve(self) -> None:
        """Runs for the connection's life (WebSession.connection_made starts it)."""
        try:
            if not await self._admitted():
                self.h2.initiate_connection()
                self._goaway(Codes.ENHANCE_YOUR_CALM, b"refused")
                return
            self.h2.initiate_connection()
            self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
            self._write()
            self._ready = True
            self._arm()
            if self._early:
                early, self._early = bytes(self._early), bytearray()
                self.data_received(early)
                if self._reading_paused and not self.closed:
                    self._reading_paused = False
                    self.transport.resume_reading()
            await self._lost
        except (ConnectionError, OSError) as exc:
            log.debug("client %s: %s", self.client_ip, exc)
        finally:
            self._end_all()
            self.close()
            self.services.session_ended(self.id)

    def send(self, data: bytes) -> None:
        """Only ``_admitted``'s refusal comes here: an HTTP/1.1 page, not for h2
        (the connection ends with GOAWAY instead)."""

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._end_all()
        super().connection_lost(exc)
        if not self._lost.done():
            self._lost.set_result(None)

    def _end_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.client_gone()
        self.streams.clear()

    def shutdown(self, reason: str) -> None:
        self._goaway(Codes.NO_ERROR, b"shutting down")

    def drain_started(self) -> None:
        """SIGTERM: GOAWAY(NO_ERROR) now; the streams in flight finish (RFC 9113 §6.8)."""
        if self._ready and not self._ending:
            self._ending = True
            self.h2.close_connection(Codes.NO_ERROR)
            self._write()
            if not self.streams:
                self._close_soon()

    # -- bytes in -----------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._ready:
            self._early += data
            if len(self._early) > EARLY_LIMIT and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self.bytes_in += len(data)
        loop = self.services.loop
        now = loop.time()
        was_in_block = self.guard.in_block
        problem = self.guard.feed(data, now)
        if problem:
            log.info("client %s: HTTP/2 %s; GOAWAY", self.client_ip, problem)
            self._goaway(Codes.ENHANCE_YOUR_CALM, problem.encode())
            return
        if self.guard.in_block and not was_in_block:
            self._block_started = now
            self._arm()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued GOAWAY with the error's code (PROTOCOL_ERROR,
            # FLOW_CONTROL_ERROR, ENHANCE_YOUR_CALM for an HPACK bomb ...).
            log.info("client %s: HTTP/2 protocol error: %s; GOAWAY", self.client_ip,
                     str(exc)[:200])
            out = self.h2.data_to_send()
            if not out:
                # A bad preface is refused before h2 queues anything (RFC 9113 §3.4:
                # the GOAWAY may be omitted; a client that tried HTTP/2 still reads it).
                try:
                    self.h2.close_connection(getattr(exc, "error_code", None)
                                             or Codes.PROTOCOL_ERROR)
                except h2.exceptions.ProtocolError:
                    pass
                out = self.h2.data_to_send()
            if out and not self.transport.is_closing():
                self.bytes_out += len(out)
                self.transport.write(out)
            self._close_soon()
            return
        started = []
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._on_data(event)
            elif kind is h2.events.RequestReceived:
                stream = self._on_request(event)
                if stream is not None:
                    started.append(stream)
            elif kind is h2.events.StreamEnded:
                stream = self.streams.get(event.stream_id)
                if stream is not None and not stream.request_ended:
                    stream.feed(http11.EndOfMessage())
            elif kind is h2.events.StreamReset:
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.client_gone()
                    self._stream_gone()
            elif kind is h2.events.WindowUpdated:
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.flush()
                else:
                    self.flush_all()
            elif kind is h2.events.RemoteSettingsChanged:
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self.flush_all()
            elif kind is h2.events.ConnectionTerminated:
                self._ending = True          # the client's GOAWAY: finish, then close
                if not self.streams:
                    self._close_soon()
        for stream in started:
            # A stream opened and reset in the same read never reaches an upstream.
            if not stream.closed:
                stream.task = loop.create_task(stream.run())
        self._write()

    def _on_request(self, event: h2.events.RequestReceived) -> H2Stream | None:
        sid = event.stream_id
        if self._ending:
            self._reset(sid, Codes.REFUSED_STREAM)   # after our GOAWAY: retry elsewhere
            return None
        req = h2rules.request_from_h2(event.headers or [], ended=event.stream_ended is not None,
                                      max_header_list_size=self.max_header_list)
        self.requests += 1
        self._since = self.services.loop.time()
        if isinstance(req, h2rules.Refusal):
            log.info("client %s: HTTP/2 stream %d refused (%d): %s", self.client_ip, sid,
                     req.status, req.reason)
            self.services.stats.web_requests[self.kind] += 1
            page = error_page(req.status, "The request could not be understood."
                              if req.status == 400 else "The request headers are too large.")
            stream = H2Stream(self, sid, http11.Request(b"GET", b"/", h2rules.VERSION, [],
                                                        http11.NO_BODY))
            self.streams[sid] = stream
            stream.send(page)
            stream.finish()
            return None
        stream = H2Stream(self, sid, req)
        self.streams[sid] = stream
        if req.body_mode is http11.NO_BODY:
            stream.feed(http11.EndOfMessage())
        return stream

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid, size = event.stream_id, event.flow_controlled_length
        stream = self.streams.get(sid)
        if stream is None or stream.closed or stream.request_ended:
            self._ack(size, sid)             # nobody reads it: the window reopens
            return
        if size > len(event.data):
            self._ack(size - len(event.data), sid)   # padding
        if event.data:
            stream.feed(http11.Data(event.data))

    def _ack(self, size: int, sid: int) -> None:
        if size and not self.closed:
            try:
                self.h2.acknowledge_received_data(size, sid)
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                pass

    # -- bytes out ----------------------------------------------------------
    def _write(self) -> None:
        """Send h2's output at the end of this loop iteration: the frames of every
        stream that moved meanwhile go out in one write (one TLS record, one syscall),
        not one per frame."""
        if not self._write_due:
            self._write_due = True
            self.services.loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._write_due = False
        data = self.h2.data_to_send()
        if data and not self.closed and not self.transport.is_closing():
            self.bytes_out += len(data)
            self.transport.write(data)

    @property
    def writable(self) -> bool:
        return self._write_ready and not self.closed

    def pause_writing(self) -> None:
        # The client is not reading: read no more from it either (no answers to its
        # PINGs and SETTINGS pile up), and stop moving response bytes to the socket.
        super().pause_writing()
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()
        self.flush_all()

    def flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if not self.writable:
                break
            stream.flush()
        self._write()

    def _reset(self, sid: int, code) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass
        self._write()

    def _goaway(self, code, reason: bytes = b"") -> None:
        if self.closed:
            return
        self._ending = True
        try:
            self.h2.close_connection(code, additional_data=reason[:100])
        except h2.exceptions.ProtocolError:
            pass
        self._close_soon()

    def _close_soon(self) -> None:
        """Close once the last frames are out; abort a client that never takes them."""
        if self.transport is None or self.closed:
            return
        self._write_now()
        self.transport.close()
        self.closed = True
        transport = self.transport
        self.services.loop.call_later(CLOSE_GRACE, _abort, transport)
        self._end_all()
        if not self._lost.done():
            self._lost.set_result(None)

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self._stream_gone()

    def _stream_gone(self) -> None:
        self._since = self.services.loop.time()
        if self._ending and not self.streams:
            self._close_soon()

    # -- timeouts -----------------------------------------------------------
    def _deadline(self) -> tuple[float, str] | None:
        web = self.services.settings.web
        if self.guard.in_block:
            return self._block_started + web.header_timeout, "header block too slow"
        if self.streams:
            return None                      # the streams' own timeouts apply
        if not self.requests:
            return self._since + web.header_timeout, ""
        return self._since + web.keepalive_timeout, ""

    def _arm(self) -> None:
        """(Re)schedule the one timer; it re-checks the state when it fires."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.closed:
            return
        due = self._deadline()
        web = self.services.settings.web
        when = due[0] if due else self.services.loop.time() + min(web.header_timeout,
                                                                  web.keepalive_timeout)
        self._timer = self.services.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        due = self._deadline()
        if due is not None and self.services.loop.time() >= due[0]:
            why = due[1]
            if why:
                log.info("client %s: HTTP/2 %s; GOAWAY", self.client_ip, why)
                self._goaway(Codes.ENHANCE_YOUR_CALM, why.encode())
            else:
                self._goaway(Codes.NO_ERROR, b"idle")
            return
        self._arm()


class H2Stream(WebSession):
    """One stream as the HTTP/1.1 pipeline sees a client: request events in,
    HTTP/1.1 response bytes out (turned into HEADERS and DATA here)."""

    def __init__(self, conn: H2Session, stream_id: int, req: http11.Request):
        super().__init__(conn.services, conn.kind, True, conn.addresses)
        self.conn = conn
        self.stream_id = stream_id
        self.req = req
        self.id = conn.id
        self.transport = conn.transport
        self.parser = _StreamParser()
        (self.client_ip, self.client_port, self.local_ip, self.local_port) = (
            conn.client_ip, conn.client_port, conn.local_ip, conn.local_port)
        self.state = "h2"
        self.task: asyncio.Task | None = None
        self.request_ended = False
        self._unacked = 0                 # the last Data taken, acknowledged on the next take
        self._out = http11.ResponseParser(req.method)
        self._outbuf = bytearray()
        self._end = False                 # the response is complete (END_STREAM to send)
        self._ended = False               # END_STREAM (or RST_STREAM) sent
        self._sent = 0
        self._room = asyncio.Event()
        self._room.set()
        self._upstream_conn = None        # (Upstream, HttpConnection) while proxying
        self._after = False               # _after_end ran
        self._input_closed = False        # no more request events will come

    # -- request side -------------------------------------------------------
    def feed(self, event) -> None:
        if type(event) is http11.EndOfMessage:
            self.request_ended = True
        self.events.append(event)
        self._wake()

    async def next_event(self, timeout: float):
        if self._unacked:
            self.conn._ack(self._unacked, self.stream_id)
            self.conn._write()
            self._unacked = 0
        while not self.events:
            if self.closed or self._input_closed:
                return None
            self._waiter = self.services.loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            finally:
                self._waiter = None
        event = self.events.popleft()
        if type(event) is http11.Data:
            self._unacked = len(event.data)
        return event

    async def wait_readable(self, timeout: float) -> None:   # pragma: no cover - unused
        return None

    def start_next(self, *args) -> None:                      # pragma: no cover - unused
        return None

    # -- lifecycle ----------------------------------------------------------
    async def run(self) -> None:
        req = self.req
        try:
            await self._handle(req)
        except asyncio.CancelledError:
            held = self._upstream_conn
            if held is not None and held[1] not in held[0].idle:
                held[1].close()
        except (ConnectionError, OSError) as exc:
            log.debug("client %s stream %d: %s", self.client_ip, self.stream_id, exc)
        except Exception:
            log.exception("client %s: HTTP/2 stream %d failed", self.client_ip, self.stream_id)
        finally:
            done = getattr(self, "_request_done", None)   # access.log and metrics
            if done is not None:
                try:
                    done(req)
                except Exception:
                    log.exception("access log of an HTTP/2 stream")
            self.finish()

    async def _connect(self, upstream, method: bytes):
        if self.closed:
            raise asyncio.CancelledError        # reset before it reached an upstream
        conn = await super()._connect(upstream, method)
        if self.closed:
            conn.close()
            raise asyncio.CancelledError
        self._upstream_conn = (upstream, conn)
        return conn

    def client_gone(self) -> None:
        """The client reset the stream, or the connection ended."""
        self.closed = True
        self._ended = True
        self._outbuf.clear()
        self._room.set()
        self._wake()
        if self.task is not None and not self.task.done() and self._upstream_conn is not None:
            # Waiting on its upstream (up to read_timeout): let both go now. Before that
            # (routing, memcached) it runs to its end and stops at _connect.
            self.task.cancel()

    def finish(self) -> None:
        """The pipeline is done with this request: whatever the response lacks ends
        here (a body framed by closing), or the stream is reset (a response cut short)."""
        if not self.closed and not self._end:
            for event in self._out.feed_eof():
                self._emit(event)
            if not self._end:
                self._reset(Codes.INTERNAL_ERROR if self._sent or self._out.done
                            else Codes.CANCEL)
        self._upstream_conn = None
        if self._ended:
            self.conn.stream_done(self)

    def _reset(self, code) -> None:
        if not self._ended:
            self._ended = True
            self.closed = True
            self._outbuf.clear()
            self.conn._reset(self.stream_id, code)
        self._room.set()
        self._wake()

    # -- response side ------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed or self._ended:
            return
        events = self._out.feed(data)
        for i, event in enumerate(events):
            self._emit(event, events[i + 1] if i + 1 < len(events) else None)

    def _emit(self, event, following=None) -> None:
        h2c = self.conn.h2
        kind = type(event)
        try:
            if kind is http11.Response:
                headers = h2rules.response_headers(event)
                if event.informational:
                    h2c.send_headers(self.stream_id, headers)
                    self.conn._write()
                    return
                if type(following) is http11.EndOfMessage:
                    h2c.send_headers(self.stream_id, headers, end_stream=True)
                    self._end = self._ended = True
                    self._after_end()
                else:
                    h2c.send_headers(self.stream_id, headers)
                self.conn._write()
            elif kind is http11.Data:
                self._outbuf += event.data
                self.flush()
            elif kind is http11.EndOfMessage:
                if not self._end:
                    self._end = True
                    self.flush()
            elif kind is http11.ParseError:
                log.warning("HTTP/2 stream %d: unparsable response (%s)", self.stream_id,
                            event.reason)
                self._reset(Codes.INTERNAL_ERROR)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError) as exc:
            log.debug("HTTP/2 stream %d: %s", self.stream_id, exc)
            self.client_gone()

    def flush(self) -> None:
        """Send what the windows and the socket allow; END_STREAM after the last byte."""
        if self._ended:
            return
        conn = self.conn
        h2c = conn.h2
        sid = self.stream_id
        buf = self._outbuf
        try:
            while buf and conn.writable:
                n = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size,
                        len(buf))
                if n <= 0:
                    break
                last = self._end and n == len(buf)
                h2c.send_data(sid, bytes(buf[:n]), end_stream=last)
                del buf[:n]
                self._sent += n
                if last:
                    self._ended = True
            if self._end and not buf and not self._ended:
                h2c.end_stream(sid)
                self._ended = True
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError) as exc:
            log.debug("HTTP/2 stream %d: %s", sid, exc)
            self.client_gone()
        conn._write()
        if len(buf) <= STREAM_BUFFER:
            self._room.set()
        if self._ended and not self.closed and not self._after:
            self._after_end()

    def _after_end(self) -> None:
        """END_STREAM is out. A request body still coming is not wanted (RFC 9113 §8.1:
        RST_STREAM(NO_ERROR) after a complete response)."""
        self._after = True
        if not self.request_ended:
            self.conn._reset(self.stream_id, Codes.NO_ERROR)
            self._input_closed = True
            self._wake()
        if self.task is None or self.task.done():
            self.conn.stream_done(self)

    async def drain(self, send_timeout: float | None = None) -> None:
        """Until the stream's buffer is under STREAM_BUFFER. SendTimeout when nothing
        of it moved for ``send_timeout`` (the client grants no window, or reads nothing)."""
        while len(self._outbuf) > STREAM_BUFFER and not self.closed:
            sent = self._sent
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), send_timeout)
            except asyncio.TimeoutError:
                if self._sent == sent:
                    raise SendTimeout(f"peer accepted nothing for {send_timeout:g}s") from None

    def close(self) -> None:
        if not self._ended:
            self._reset(Codes.CANCEL)

    def abort(self) -> None:
        """SendTimeout: a stream starved of window is reset; a connection whose socket
        takes nothing at all is ended."""
        if not self.conn.writable:
            self.conn.abort()
        self._reset(Codes.CANCEL)

    def connection_made(self, transport) -> None:                 # pragma: no cover
        raise RuntimeError("an H2Stream has no transport of its own")
