"""Sans-IO HTTP/1.1 message parser for the reverse proxy (bytes in, events out).

One parser reads one direction of one connection: `RequestParser` reads what a
client sends, `ResponseParser` reads what an upstream answers. Neither touches a
socket; the asyncio glue feeds bytes and acts on the events (h11's model, see
reference/tui-and-server-style.md §3.1).

Events, in the order a message produces them::

    Request | Response       the head; ``body_mode`` says how the body is framed
    Data ...                 body pieces (de-chunked), streamed as they arrive
    EndOfMessage(trailers)   the message is complete
    ParseError(status, why)  the bytes are not acceptable; close the connection

After `EndOfMessage` the parser pauses: later bytes (pipelined requests, or
WebSocket frames after an upgrade) are kept, unparsed, until the caller either
calls ``start_next()`` (another message on this connection; only when
``keep_alive`` is true) or ``take_remainder()`` (the connection stops being HTTP,
e.g. after ``101 Switching Protocols``). While paused the buffer is unbounded:
the glue pauses reading, as uvicorn does on h11's PAUSED.

A `ResponseParser` reports 1xx informational heads (``100 Continue``, ``103``)
as a `Response` with no body and no `EndOfMessage`, then keeps reading the final
response. ``101`` and a 2xx answer to CONNECT end the message with body_mode
``upgrade``.

Strictness (a proxy that reads framing differently from its upstream is a
request-smuggling vector, so anything ambiguous is refused, nginx-style):

* line endings are CRLF only. A bare LF or bare CR anywhere in a head, a
  chunk-size line or the trailers is a 400. RFC 9112 §2.2 lets a recipient
  accept bare LF, but our upstreams (Jetty) may not, and disagreeing on where a
  head ends is exactly how smuggling starts, so we do not;
* empty lines before a request line are skipped (RFC 9112 §2.2 asks for that:
  some clients send a stray CRLF after a POST body);
* obs-fold, whitespace before the colon, non-token name characters, and
  control characters in a value (NUL, CR, LF and the rest of C0/DEL; HTAB is
  fine) are 400;
* Content-Length must be one header with one value of 1–18 ASCII digits:
  duplicates and comma lists (even of equal values) are refused, as nginx does;
* Content-Length together with Transfer-Encoding is 400; Transfer-Encoding on
  an HTTP/1.0 message is 400; on a request the codings must be exactly
  ``chunked`` (any other final coding is 400; ``gzip, chunked`` is 501, we do
  not implement other codings); on a response a final coding other than
  chunked means "read until close" (RFC 9112 §6.3), other codings are refused;
* HTTP/1.1 requests need exactly one Host header; more than one is always 400;
* chunk sizes are 1–16 hex digits; chunk extensions must be well-formed
  (token[=token|quoted-string]); chunk data must be followed by CRLF;
* versions other than HTTP/1.0 and HTTP/1.1 are 505 (requests);
* limits (constructor arguments): start line -> 414, header block size and
  header count -> 431 (trailers share the same limits), declared or streamed
  body beyond ``max_body`` -> 413 (default: no limit, like Carbonio's
  ``client_max_body_size 0``).

A ResponseParser reports every problem as status 502: that is what the proxy
answers its client when an upstream sends something it cannot trust.

Proxy note: forward bodies with framing headers you compute from ``body_mode``
(Content-Length: n, or Transfer-Encoding: chunked), never by copying the
peer's; `remove_hop_by_hop` drops Transfer-Encoding for that reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

Headers = list[tuple[bytes, bytes]]


# --------------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class BodyMode:
    """How a message body is framed.

    kind is one of ``none``, ``length`` (with ``length`` bytes), ``chunked``,
    ``until-close`` (responses only: the body ends when the upstream closes) or
    ``upgrade`` (no body; after the exchange the connection carries another
    protocol: WebSocket, CONNECT tunnel).
    """
    kind: str
    length: int | None = None

    @classmethod
    def of_length(cls, n: int) -> BodyMode:
        return cls("length", n)


# BodyMode is frozen: the modes of small lengths are made once and shared (a response's
# Content-Length is mostly one of a few small values), at most _LENGTH_MODES_MAX of them.
_LENGTH_MODES: Final[dict[int, BodyMode]] = {}
_LENGTH_MODES_MAX: Final = 4096


def _length_mode(n: int) -> BodyMode:
    mode = _LENGTH_MODES.get(n)
    if mode is None:
        mode = BodyMode("length", n)
        if n < 65536 and len(_LENGTH_MODES) < _LENGTH_MODES_MAX:
            _LENGTH_MODES[n] = mode
    return mode

    def __repr__(self) -> str:
        return f"length({self.length})" if self.kind == "length" else self.kind


NO_BODY: Final = BodyMode("none")
CHUNKED: Final = BodyMode("chunked")
UNTIL_CLOSE: Final = BodyMode("until-close")
UPGRADE: Final = BodyMode("upgrade")


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes          # as sent, e.g. b"GET" (methods are case-sensitive)
    target: bytes          # request-target as sent, e.g. b"/mail?x=1"
    version: bytes         # b"1.1" or b"1.0"
    headers: Headers       # names keep their case; use get_header() & co.
    body_mode: BodyMode


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: bytes
    version: bytes
    headers: Headers
    body_mode: BodyMode

    @property
    def informational(self) -> bool:
        """A 1xx head that a final response will follow (not 101)."""
        return 100 <= self.status < 200 and self.status != 101


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ParseError:
    """The input cannot be parsed safely; answer ``status`` (if the peer is a
    client) and close. The parser ignores everything after this."""
    status: int
    reason: str


Event = Request | Response | Data | EndOfMessage | ParseError

# The parsers make their events here rather than through the dataclasses' generated
# __init__: that one stays interpreted in the compiled build, where a frozen one sets
# every field with object.__setattr__ from Python (~7k instructions for a Request).
# Compiled, the assignments below are stores into the new object's fields (mypyc
# writes native attributes directly; ~1k instructions with the __new__ call); as
# Python, where they would raise FrozenInstanceError, the constructor runs. The same
# objects either way (test_web_percall).


def _request(method: bytes, target: bytes, version: bytes, headers: Headers,
             body_mode: BodyMode) -> Request:
    if not _COMPILED:
        return Request(method, target, version, headers, body_mode)
    event = Request.__new__(Request)
    event.method = method               # type: ignore[misc]
    event.target = target               # type: ignore[misc]
    event.version = version             # type: ignore[misc]
    event.headers = headers             # type: ignore[misc]
    event.body_mode = body_mode         # type: ignore[misc]
    return event


def _response(status: int, reason: bytes, version: bytes, headers: Headers,
              body_mode: BodyMode) -> Response:
    if not _COMPILED:
        return Response(status, reason, version, headers, body_mode)
    event = Response.__new__(Response)
    event.status = status               # type: ignore[misc]
    event.reason = reason               # type: ignore[misc]
    event.version = version             # type: ignore[misc]
    event.headers = headers             # type: ignore[misc]
    event.body_mode = body_mode         # type: ignore[misc]
    return event


def _data(data: bytes) -> Data:
    if not _COMPILED:
        return Data(data)
    event = Data.__new__(Data)
    event.data = data                   # type: ignore[misc]
    return event


def _end(trailers: Headers) -> EndOfMessage:
    if not _COMPILED:
        return EndOfMessage(trailers)
    event = EndOfMessage.__new__(EndOfMessage)
    event.trailers = trailers           # type: ignore[misc]
    return event


# mypyc's functions carry no Python code object
_COMPILED: Final[bool] = not hasattr(_end, "__code__")


# ------------------------------------------------------------------- grammar

_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
# A field line, after the CRLF is gone. The value excludes NUL, CR, LF and the
# other controls except HTAB; surrounding whitespace is stripped afterwards
# (a greedy class + strip is linear, a lazy regex would not be).
_FIELD_LINE: Final = re.compile(rb"(" + _TOKEN + rb"):([^\x00-\x08\x0a-\x1f\x7f]*)")
_REQUEST_LINE: Final = re.compile(
    rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9]+(?:\.[0-9]+)?)")
_STATUS_LINE: Final = re.compile(
    rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_QUOTED: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t !-~\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]+)"
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")
_MAX_CHUNK_DIGITS: Final = 16          # 64-bit sizes; longer is an overflow attempt
_MAX_LENGTH_DIGITS: Final = 18         # < 2**63, whatever the peer's integer type
_SUPPORTED_VERSIONS: Final = (b"1.0", b"1.1")

# parser states
# (Final int literals: compiled code compares them as C integers, no global lookup)
_HEAD: Final = 0
_BODY: Final = 1
_CHUNK_SIZE: Final = 2
_CHUNK_DATA: Final = 3
_CHUNK_END: Final = 4
_TRAILERS: Final = 5
_UNTIL_CLOSE: Final = 6
_DONE: Final = 7
_SWITCHED: Final = 8
_FAILED: Final = 9
_CLOSED: Final = 10

# A read holding a whole head and this many bytes or more: the head alone goes through
# the buffer (feed). Below it, one pass through the buffer costs less than the search.
_SPLIT_READ: Final = 8192


def _why_bad_field(line: bytes) -> str:
    """Name the rule a rejected field line broke (for logs and tests)."""
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding (obs-fold) is not accepted"
    if b"\r" in line:
        return "bare CR in the message head"
    colon = line.find(b":")
    if colon < 0:
        return "header line without a colon"
    name = line[:colon]
    if not name:
        return "empty header name"
    if name[-1:] in (b" ", b"\t"):
        return "whitespace between header name and colon"
    if not _TOKEN_RE.fullmatch(name):
        return "invalid character in header name"
    return "invalid character in header value (NUL, CR, LF or other control)"


# Byte classes for C-level checks (bytes.translate deletes the allowed bytes; what is
# left is what breaks the rule): sre matches a character class at ~50 instructions a
# byte, translate at a few, and a head is checked byte by byte on every message.
_SHORT: Final = 64                 # below this, one sre call costs less than translate's set-up
_FIELD_TEXT: Final = bytes([0x09, *range(0x20, 0x7f), *range(0x80, 0x100)])   # HTAB, SP-~, obs-text
_TARGET_CHARS: Final = bytes([*range(0x21, 0x7f), *range(0x80, 0x100)])      # no SP, no controls


_GOOD_NAMES: Final[set[bytes]] = set()          # header names already checked to be tokens
_GOOD_NAMES_MAX: Final = 4096                   # of at most 64 bytes each: 300 KB at most


def _good_name(name: bytes) -> None:
    """Remember a header name checked to be a token (a set lookup from then on)."""
    if len(name) <= 64 and len(_GOOD_NAMES) < _GOOD_NAMES_MAX and name.__class__ is bytes:
        _GOOD_NAMES.add(name)
        _LOWER[name] = name.lower()


# The lower-cased form of each name in _GOOD_NAMES (filled with it, as bounded): framing
# and forwarding look a name up here instead of calling bytes.lower (a method call in
# the compiled build) for every header of every message.
_LOWER: Final[dict[bytes, bytes]] = {}


def _lower(name: bytes) -> bytes:
    """``name.lower()`` of a header name from a parsed message (bytes)."""
    low = _LOWER.get(name)
    return low if low is not None else name.lower()


# Field lines already parsed by _parse_fields' fast loop -> their (name, value): a
# client sends the same Host, User-Agent, Accept ... lines on every request of a
# connection, an upstream the same Server, Content-Type ... lines. Lines up to
# _GOOD_LINE_MAX bytes, at most _GOOD_LINES_MAX of them (emptied when full: ~1 MB at
# most); never a line whose header carries credentials (_UNREMEMBERED).
_GOOD_LINES: Final[dict[bytes, tuple[bytes, bytes]]] = {}
_GOOD_LINES_MAX: Final = 2048
_GOOD_LINE_MAX: Final = 256
_UNREMEMBERED: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie",
                           b"set-cookie"})


def _good_line(line: bytes, field: tuple[bytes, bytes]) -> None:
    """Remember a field line the fast loop accepted, and what it parsed to."""
    if len(line) <= _GOOD_LINE_MAX and line.__class__ is bytes \
            and field[0].lower() not in _UNREMEMBERED:
        if len(_GOOD_LINES) >= _GOOD_LINES_MAX:
            _GOOD_LINES.clear()
        _GOOD_LINES[line] = field


def _parse_fields(block: bytes) -> tuple[Headers, str | None]:
    """Parse CRLF-terminated field lines (a header block or trailers)."""
    if not block:
        return [], None
    lines = block[:-2].split(b"\r\n")
    # The usual case, judged as _FIELD_LINE would judge each line: no byte outside
    # _FIELD_TEXT but the CRLF ending each line, and each name (up to the first colon)
    # a token.
    if block.translate(None, _FIELD_TEXT) == b"\r\n" * len(lines):
        good = _GOOD_NAMES
        seen = _GOOD_LINES
        fields: Headers = []
        for line in lines:
            # A line this loop accepted before (its bytes were checked as this block's
            # are): the same (name, value), a dict lookup instead of two method calls.
            field = seen.get(line)
            if field is not None:
                fields.append(field)
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                break
            if name not in good:
                if not _TOKEN_RE.fullmatch(name):
                    break
                _good_name(name)
            field = (name, value.strip(b" \t"))
            fields.append(field)
            _good_line(line, field)
        else:
            return fields, None
    fields = []
    for line in lines:
        m = _FIELD_LINE.fullmatch(line)
        if m is None:
            return [], _why_bad_field(line)
        name, value = m.groups()
        fields.append((name, value.strip(b" \t")))
    return fields, None


# -------------------------------------------------------------------- parsers

class _MessageParser:
    """The state machine both directions share: heads, bodies, pausing."""

    # What a ParseError carries when the peer is at fault; ResponseParser
    # turns every status into 502.
    _role = "message"

    def __init__(self, *, max_start_line: int = 8192, max_header_bytes: int = 16 * 1024,
                 max_headers: int = 100, max_body: int | None = None,
                 max_chunk_line: int = 4096) -> None:
        self.max_start_line = max_start_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self.max_chunk_line = max_chunk_line
        self._buf = bytearray()
        self._state = _HEAD
        self._keep_alive = True
        self._remaining = 0          # bytes left in the body or current chunk
        self._body_seen = 0          # declared chunk bytes so far (max_body)
        self._reset_line_scan()

    # ------------------------------------------------------------ public API

    @property
    def keep_alive(self) -> bool:
        """Whether another message may follow on this connection once the
        current one has ended (``Connection: close``, HTTP/1.0 without
        keep-alive, read-until-close bodies, errors and upgrades say no)."""
        return self._keep_alive and self._state not in (_FAILED, _SWITCHED, _CLOSED)

    @property
    def done(self) -> bool:
        """EndOfMessage was returned; the parser waits for start_next() or
        take_remainder()."""
        return self._state == _DONE

    @property
    def buffered(self) -> int:
        """Bytes held but not yet turned into events (for read backpressure)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Take bytes from the peer; return the events they complete."""
        state = self._state
        if state == _SWITCHED:
            raise RuntimeError("the connection was handed over with take_remainder()")
        if not data or state in (_FAILED, _CLOSED):
            return []
        if state == _DONE:               # paused: keep pipelined bytes for later
            self._buf += data
            return []
        events: list[Event] = []
        if state == _HEAD and not self._buf and type(data) is bytes and len(data) >= _SPLIT_READ:
            # A head and the start of its body in one read (a download's first 256 KB):
            # the head alone through the buffer, the body straight to Data events, one
            # copy of it instead of three (into the buffer, out of it, and the
            # caller's). Feeding the two parts gives the events feeding the whole
            # would: the parser's contract for any split, tested byte by byte.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                end += 4
                self._buf += memoryview(data)[:end]
                self._run(events)
                data, state = data[end:], self._state
                if not data or state == _FAILED:
                    return events
        if not self._buf and state in (_BODY, _CHUNK_DATA, _UNTIL_CLOSE):
            # Hot path: body bytes go straight from the input to Data events
            # without a trip through the buffer.
            data = self._pass_body_through(bytes(data), events)
            if not data:
                return events
        self._buf += data
        self._run(events)
        return events

    def feed_eof(self) -> list[Event]:
        """The peer closed its side. Ends a read-until-close body; anything
        else cut short is a ParseError."""
        events: list[Event] = []
        state = self._state
        if state == _UNTIL_CLOSE:
            if self._buf:
                events.append(_data(self._take(len(self._buf))))
            self._finish(events, [])
            self._keep_alive = False
        elif state == _HEAD and not self._buf and self._start_end < 0:
            self._state = _CLOSED        # clean close between messages
        elif state in (_DONE, _FAILED, _SWITCHED, _CLOSED):
            self._keep_alive = False
        elif state == _HEAD:
            self._fail(events, 400, "connection closed before the message head was complete")
        else:
            self._fail(events, 400, "connection closed in the middle of the message body")
        return events

    def take_remainder(self) -> bytes:
        """Hand over the bytes after the current message (after an upgrade the
        peer's first WebSocket frames may already be here). The parser is done
        with this connection afterwards."""
        if self._state != _DONE:
            raise RuntimeError("take_remainder() is only valid after EndOfMessage")
        rest = bytes(self._buf)
        self._buf.clear()
        self._state = _SWITCHED
        return rest

    # ------------------------------------------------------------ internals

    def _restart(self) -> list[Event]:
        if self._state != _DONE:
            raise RuntimeError("start_next() is only valid after EndOfMessage")
        if not self._keep_alive:
            raise RuntimeError("this connection cannot carry another message")
        self._state = _HEAD
        self._reset_line_scan()
        self._body_seen = 0
        events: list[Event] = []
        if self._buf:                # pipelined bytes; else nothing to parse yet
            self._run(events)
        return events

    def _reset_line_scan(self) -> None:
        self._scan = 0               # where the next LF search starts
        self._line_start = 0         # start of the line being collected
        self._start_end = -1         # offset after the start line, once seen
        self._lines = 0              # field lines so far

    def _run(self, events: list[Event]) -> None:
        while True:
            state = self._state
            if state == _HEAD:
                # A whole head already buffered (the usual case) goes to _whole_head
                # without the extra call through _parse_head.
                if self._scan == 0 and self._buf[:1] != b"\r" and self._whole_head(events):
                    progressed = self._state != _FAILED
                else:
                    progressed = self._parse_head_lines(events)
            elif state == _BODY or state == _CHUNK_DATA:
                progressed = self._parse_body_bytes(events)
            elif state == _CHUNK_SIZE:
                progressed = self._parse_chunk_size(events)
            elif state == _CHUNK_END:
                progressed = self._parse_chunk_end(events)
            elif state == _TRAILERS:
                progressed = self._parse_trailers(events)
            elif state == _UNTIL_CLOSE:
                if self._buf:
                    events.append(_data(self._take(len(self._buf))))
                return
            else:
                return
            if not progressed:
                return

    def _fail(self, events: list[Event], status: int, reason: str) -> bool:
        events.append(ParseError(status, reason))
        self._state = _FAILED
        self._keep_alive = False
        self._buf.clear()
        return False

    def _take(self, n: int) -> bytes:
        """Remove and return the first n buffered bytes (one copy)."""
        buf = self._buf
        if n >= len(buf):
            out = bytes(buf)
            buf.clear()
            return out
        with memoryview(buf) as view:
            out = bytes(view[:n])
        del buf[:n]                  # O(1): CPython advances the start offset
        return out

    def _finish(self, events: list[Event], trailers: Headers) -> None:
        events.append(_end(trailers))
        self._state = _DONE

    # head ------------------------------------------------------------------

    def _parse_head(self, events: list[Event]) -> bool:
        if self._scan == 0 and self._buf[:1] != b"\r" and self._whole_head(events):
            return self._state != _FAILED
        return self._parse_head_lines(events)

    def _parse_head_lines(self, events: list[Event]) -> bool:
        """Slow path: the head arrives in pieces. Every LF is looked at once,
        however the input is split (no rescans)."""
        buf = self._buf
        while True:
            if self._start_end < 0 and self._line_start == 0 and buf[:1] == b"\x16":
                return self._fail(events, 400, "TLS handshake on a plain-HTTP port")
            lf = buf.find(b"\n", self._scan)
            if lf < 0:
                self._scan = len(buf)
                return self._check_partial_head(events)
            if lf == 0 or buf[lf - 1] != 0x0D:
                # An over-long line is refused as such however it ends, with the
                # thresholds _check_partial_head applies when it arrives in pieces:
                # the answer must not depend on how the bytes were split.
                if self._start_end < 0 and lf > self.max_start_line + 1:
                    return self._fail(events, 414, "start line too long")
                if self._start_end >= 0 and lf - self._start_end > self.max_header_bytes + 2:
                    return self._fail(events, 431, "header block too large")
                return self._fail(events, 400, "bare LF line ending in the message head")
            self._scan = lf + 1
            line_len = lf - 1 - self._line_start
            if self._start_end < 0:
                if line_len == 0:        # stray CRLF before a start line
                    del buf[:lf + 1]
                    self._scan = 0
                    continue
                if line_len > self.max_start_line:
                    return self._fail(events, 414, "start line too long")
                self._start_end = self._line_start = lf + 1
                continue
            if line_len == 0:
                return self._complete_head(events, lf + 1)
            self._lines += 1
            if self._lines > self.max_headers:
                return self._fail(events, 431, "too many header fields")
            if lf + 1 - self._start_end > self.max_header_bytes:
                return self._fail(events, 431, "header block too large")
            self._line_start = lf + 1

    def _whole_head(self, events: list[Event]) -> bool:
        """Fast path for a head that is already complete in the buffer (the
        usual case): the checks the line loop would make, done with C-level
        searches and counts. Returns False to fall back to the line loop."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or buf[:1] == b"\x16":
            return False
        head_end = end + 4
        crlfs = buf.count(b"\r\n", 0, head_end)
        if buf.count(b"\n", 0, head_end) != crlfs:
            return False                 # a bare LF: let the line loop name it
        first = buf.find(b"\r\n")
        if first > self.max_start_line:
            return self._fail(events, 414, "start line too long")
        # Bytes before count: the order in which the line loop trips them.
        if end + 2 - (first + 2) > self.max_header_bytes:
            return self._fail(events, 431, "header block too large")
        if crlfs - 2 > self.max_headers:
            return self._fail(events, 431, "too many header fields")
        # _complete_head's work; the line scan is still at its start (_scan == 0 here:
        # no start line was seen), so there is nothing to reset.
        start_line = bytes(buf[:first])
        block = bytes(buf[first + 2:end + 2])
        del buf[:head_end]
        headers, problem = _parse_fields(block)
        if problem:
            self._fail(events, 400, problem)
        else:
            self._on_head(events, start_line, headers)
        return True

    def _check_partial_head(self, events: list[Event]) -> bool:
        pending = len(self._buf)
        if self._start_end < 0:
            if pending > self.max_start_line + 1:     # +1: a CR may be waiting
                return self._fail(events, 414, "start line too long")
        elif pending - self._start_end > self.max_header_bytes + 2:
            return self._fail(events, 431, "header block too large")
        return False

    def _complete_head(self, events: list[Event], head_end: int) -> bool:
        buf = self._buf
        start_end = self._start_end
        start_line = bytes(buf[:start_end - 2])
        block = bytes(buf[start_end:head_end - 2])
        del buf[:head_end]
        self._reset_line_scan()
        headers, problem = _parse_fields(block)
        if problem:
            return self._fail(events, 400, problem)
        return self._on_head(events, start_line, headers)

    def _on_head(self, events: list[Event], start_line: bytes, headers: Headers) -> bool:
        raise NotImplementedError

    def _content_length(self, values: list[bytes]) -> int | str:
        """The declared length, or why it is unacceptable."""
        if len(values) > 1:
            return "duplicate Content-Length headers"
        value = values[0]
        if not value.isdigit() or not value.isascii():
            return "invalid Content-Length value"
        if len(value) > _MAX_LENGTH_DIGITS:
            return "Content-Length too large"
        return int(value)

    def _start_body(self, events: list[Event], mode: BodyMode) -> bool:
        kind = mode.kind
        if kind == "length" and mode.length:
            self._state = _BODY
            self._remaining = mode.length
        elif kind == "chunked":
            self._state = _CHUNK_SIZE
        elif kind == "until-close":
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        else:                            # none, length(0), upgrade
            self._finish(events, [])
        return True

    # body ------------------------------------------------------------------

    def _pass_body_through(self, data: bytes, events: list[Event]) -> bytes:
        """Emit body bytes directly from the input; return what is left."""
        if self._state == _UNTIL_CLOSE:
            events.append(_data(data))
            return b""
        n = self._remaining
        if len(data) <= n:
            events.append(_data(data))
            self._body_consumed(events, len(data))
            return b""
        events.append(_data(data[:n]))
        self._body_consumed(events, n)
        return data[n:]

    def _parse_body_bytes(self, events: list[Event]) -> bool:
        n = min(len(self._buf), self._remaining)
        if n == 0:
            return False
        events.append(_data(self._take(n)))
        self._body_consumed(events, n)
        return True

    def _body_consumed(self, events: list[Event], n: int) -> None:
        self._remaining -= n
        if self._remaining == 0:
            if self._state == _BODY:
                self._finish(events, [])
            else:
                self._state = _CHUNK_END

    def _parse_chunk_size(self, events: list[Event]) -> bool:
        buf = self._buf
        lf = buf.find(b"\n", self._scan)
        if lf < 0:
            if len(buf) > self.max_chunk_line + 1:
                return self._fail(events, 400, "chunk-size line too long")
            self._scan = len(buf)
            return False
        self._scan = 0
        if lf == 0 or buf[lf - 1] != 0x0D:
            return self._fail(events, 400, "bare LF in a chunk-size line")
        if lf - 1 > self.max_chunk_line:
            return self._fail(events, 400, "chunk-size line too long")
        line = self._take(lf + 1)[:-2]
        m = _CHUNK_LINE.fullmatch(line)
        if m is None:
            return self._fail(events, 400, "malformed chunk-size line")
        digits = m.group(1)
        if len(digits) > _MAX_CHUNK_DIGITS:
            return self._fail(events, 400, "chunk size has too many digits")
        size = int(digits, 16)
        if size == 0:
            self._state = _TRAILERS
            return True
        self._body_seen += size
        if self.max_body is not None and self._body_seen > self.max_body:
            return self._fail(events, 413, "body larger than allowed")
        self._remaining = size
        self._state = _CHUNK_DATA
        return True

    def _parse_chunk_end(self, events: list[Event]) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._state = _CHUNK_SIZE
            return True
        if buf == b"" or buf == b"\r":
            return False
        return self._fail(events, 400, "chunk data not followed by CRLF")

    def _parse_trailers(self, events: list[Event]) -> bool:
        buf = self._buf
        while True:
            lf = buf.find(b"\n", self._scan)
            if lf < 0:
                if len(buf) > self.max_header_bytes + 2:
                    return self._fail(events, 431, "trailer section too large")
                self._scan = len(buf)
                return False
            if lf == 0 or buf[lf - 1] != 0x0D:
                return self._fail(events, 400, "bare LF line ending in the trailers")
            self._scan = lf + 1
            if lf - 1 == self._line_start:           # the empty line: done
                block = self._take(lf + 1)[:-2]
                self._reset_line_scan()
                trailers, problem = _parse_fields(block)
                if problem:
                    return self._fail(events, 400, problem)
                self._finish(events, trailers)
                return True
            self._lines += 1
            if self._lines > self.max_headers:
                return self._fail(events, 431, "too many trailer fields")
            if lf + 1 > self.max_header_bytes:
                return self._fail(events, 431, "trailer section too large")
            self._line_start = lf + 1


# Short request lines accepted before -> (method, target, version): a client repeats
# its polls and assets ("POST /service/soap/NoOpRequest HTTP/1.1"). Never one with a
# query (it may carry a token); at most _REQUEST_LINES_MAX of them (emptied when full).
_REQUEST_LINES: Final[dict[bytes, tuple[bytes, bytes, bytes]]] = {}
_REQUEST_LINES_MAX: Final = 1024


class RequestParser(_MessageParser):
    """Parses requests from a client, one at a time (pipelining via start_next)."""

    def start_next(self) -> list[Event]:
        """Begin the next request on a kept-alive connection; returns the
        events that already-buffered (pipelined) bytes produce."""
        return self._restart()

    def _on_head(self, events: list[Event], start_line: bytes, headers: Headers) -> bool:
        # As _REQUEST_LINE.fullmatch, with C-level checks for a long target (neither a
        # token nor a target holds a space: exactly three parts).
        seen = _REQUEST_LINES.get(start_line)
        if seen is not None:             # a request line accepted before
            method, target, version = seen
        else:
            parts = start_line.split(b" ") if len(start_line) > _SHORT else ()
            if len(parts) == 3 and parts[0] and parts[1] \
                    and parts[2][:5] == b"HTTP/" and _TOKEN_RE.fullmatch(parts[0]) \
                    and not parts[1].translate(None, _TARGET_CHARS) \
                    and parts[2][5:] in _SUPPORTED_VERSIONS:
                method, target, version = parts[0], parts[1], parts[2][5:]
            else:
                m = _REQUEST_LINE.fullmatch(start_line)
                if m is None:
                    return self._fail(events, 400, "malformed request line")
                method, target, version = m.groups()
            if version not in _SUPPORTED_VERSIONS:
                return self._fail(events, 505, "HTTP version not supported")
            if len(start_line) <= _SHORT and target.find(b"?") < 0:
                if len(_REQUEST_LINES) >= _REQUEST_LINES_MAX:
                    _REQUEST_LINES.clear()
                _REQUEST_LINES[start_line] = (method, target, version)

        fields = _framing_fields(headers)
        hosts = fields.get(b"host", [])
        if len(hosts) > 1:
            return self._fail(events, 400, "more than one Host header")
        if version == b"1.1" and not hosts:
            return self._fail(events, 400, "HTTP/1.1 request without a Host header")

        transfer = fields.get(b"transfer-encoding")
        lengths = fields.get(b"content-length")
        if transfer and lengths:
            return self._fail(events, 400, "both Content-Length and Transfer-Encoding")
        if transfer:
            if version == b"1.0":
                return self._fail(events, 400, "Transfer-Encoding in an HTTP/1.0 request")
            codings = _transfer_codings(transfer)
            if codings is None:
                return self._fail(events, 400, "malformed Transfer-Encoding")
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                return self._fail(events, 400, "Transfer-Encoding must end with chunked, once")
            if len(codings) > 1:
                return self._fail(events, 501, "transfer codings other than chunked")
            mode = CHUNKED
        elif lengths:
            n = self._content_length(lengths)
            if isinstance(n, str):
                return self._fail(events, 400, n)
            if self.max_body is not None and n > self.max_body:
                return self._fail(events, 413, "body larger than allowed")
            mode = _length_mode(n)
        else:
            mode = NO_BODY

        connection = _tokens(fields.get(b"connection", []))
        self._keep_alive = _persists(version, connection)

        bodiless = mode is NO_BODY or mode.length == 0
        if method == b"CONNECT":
            if not bodiless:
                return self._fail(events, 400, "CONNECT with a body")
            mode = UPGRADE
        elif (bodiless and version == b"1.1" and b"upgrade" in connection
              and fields.get(b"upgrade")):
            # An upgrade request that also carries a body is parsed as a plain
            # request; the proxy drops Upgrade as hop-by-hop, so the upstream
            # never switches protocols under a half-read body.
            mode = UPGRADE
        events.append(_request(method, target, version, headers, mode))
        return self._start_body(events, mode)


# Status lines accepted before -> (version, status, reason): an upstream answers with
# a few of them; at most _STATUS_LINES_MAX of up to 64 bytes (emptied when full).
_STATUS_LINES: Final[dict[bytes, tuple[bytes, int, bytes]]] = {}
_STATUS_LINES_MAX: Final = 256


class ResponseParser(_MessageParser):
    """Parses an upstream's responses. It must know the request method each
    response answers (HEAD and CONNECT change the framing)."""

    # The limits spelled out, not forwarded as **limits: mypyc (the compiled build) passes
    # a forwarded **kwargs to keyword-only parameters with defaults wrongly.
    def __init__(self, request_method: bytes = b"GET", *, max_start_line: int = 8192,
                 max_header_bytes: int = 16 * 1024, max_headers: int = 100,
                 max_body: int | None = None, max_chunk_line: int = 4096) -> None:
        super().__init__(max_start_line=max_start_line, max_header_bytes=max_header_bytes,
                         max_headers=max_headers, max_body=max_body,
                         max_chunk_line=max_chunk_line)
        self.request_method = request_method

    def start_next(self, request_method: bytes = b"GET") -> list[Event]:
        self.request_method = request_method
        return self._restart()

    def _fail(self, events: list[Event], status: int, reason: str) -> bool:
        # Whatever went wrong upstream, the client gets a Bad Gateway.
        return super()._fail(events, 502, f"upstream: {reason}")

    def _on_head(self, events: list[Event], start_line: bytes, headers: Headers) -> bool:
        seen = _STATUS_LINES.get(start_line)
        if seen is not None:             # a status line read before ("HTTP/1.1 200 OK")
            version, status, reason = seen
        else:
            m = _STATUS_LINE.fullmatch(start_line)
            if m is None:
                return self._fail(events, 502, "malformed status line")
            version, status_digits, given = m.groups()
            status = int(status_digits)
            if version not in _SUPPORTED_VERSIONS or status < 100:
                return self._fail(events, 502, "unsupported version or status")
            reason = given or b""        # (None when the line has no reason at all)
            if len(start_line) <= 64:
                if len(_STATUS_LINES) >= _STATUS_LINES_MAX:
                    _STATUS_LINES.clear()
                _STATUS_LINES[start_line] = (version, status, reason)

        fields = _framing_fields(headers)
        transfer = fields.get(b"transfer-encoding")
        lengths = fields.get(b"content-length")
        if transfer and lengths:
            return self._fail(events, 502, "both Content-Length and Transfer-Encoding")
        if transfer and version == b"1.0":
            return self._fail(events, 502, "Transfer-Encoding in an HTTP/1.0 response")
        length: int | None = None
        if lengths:
            n = self._content_length(lengths)
            if isinstance(n, str):
                return self._fail(events, 502, n)
            length = n

        connection = _tokens(fields.get(b"connection", []))
        self._keep_alive = _persists(version, connection)

        method = self.request_method
        if 100 <= status < 200 and status != 101:
            # Informational: no body, and the final response follows.
            events.append(_response(status, reason, version, headers, NO_BODY))
            return True
        if status == 101 or (method == b"CONNECT" and 200 <= status < 300):
            mode = UPGRADE
            self._keep_alive = False
        elif method == b"HEAD" or status in (204, 304):
            mode = NO_BODY
        elif transfer:
            codings = _transfer_codings(transfer)
            if codings is None:
                return self._fail(events, 502, "malformed Transfer-Encoding")
            if codings[-1] != b"chunked":
                mode = UNTIL_CLOSE           # RFC 9112 §6.3 rule 4
            elif len(codings) > 1:
                return self._fail(events, 502, "transfer codings other than chunked")
            else:
                mode = CHUNKED
        elif length is not None:
            if self.max_body is not None and length > self.max_body:
                return self._fail(events, 502, "body larger than allowed")
            mode = _length_mode(length)
        else:
            mode = UNTIL_CLOSE
        events.append(_response(status, reason, version, headers, mode))
        return self._start_body(events, mode)


_FRAMING_NAMES: Final = frozenset({b"host", b"transfer-encoding", b"content-length",
                            b"connection", b"upgrade"})


def _framing_fields(headers: Headers) -> dict[bytes, list[bytes]]:
    """The headers that decide framing and connection reuse, in one pass."""
    found: dict[bytes, list[bytes]] = {}
    for key, value in headers:
        key = _lower(key)
        if key in _FRAMING_NAMES:
            found.setdefault(key, []).append(value)
    return found


def _tokens(values: list[bytes]) -> list[bytes]:
    tokens = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                tokens.append(item)
    return tokens


def _persists(version: bytes, connection: list[bytes]) -> bool:
    """Does the connection stay open after this message (RFC 9112 §9.3)? HTTP/1.1 unless
    it says "close", HTTP/1.0 only when it says "keep-alive"."""
    if version == b"1.1":
        return b"close" not in connection
    return b"keep-alive" in connection and b"close" not in connection


def _transfer_codings(values: list[bytes]) -> list[bytes] | None:
    """Lower-cased codings from all Transfer-Encoding values, or None if any
    element is empty or not a token (parameters are not accepted either)."""
    codings = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if not _TOKEN_RE.fullmatch(item):
                return None
            codings.append(item)
    return codings


# ------------------------------------------------------------ header helpers

def get_header(headers: Headers, name: bytes, default: bytes | None = None) -> bytes | None:
    """The first value of a header, matched case-insensitively."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return default


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of a header, in order, matched case-insensitively."""
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def header_tokens(headers: Headers, name: bytes) -> list[bytes]:
    """Lower-cased comma-separated tokens across all values of a header
    (Connection, Upgrade, TE ...)."""
    return _tokens(get_all(headers, name))


def expects_continue(headers: Headers) -> bool:
    """The client waits for ``100 Continue`` before sending the body. (Only
    meaningful on HTTP/1.1 requests.)"""
    return any(value.strip(b" \t").lower() == b"100-continue"
               for value in get_all(headers, b"expect"))


HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
# Connection may name extra hop-by-hop headers, but never these: dropping the
# body length or the Host while relaying would change what the upstream parses.
_NEVER_HOP_BY_HOP: Final = frozenset({b"content-length", b"host"})


def remove_hop_by_hop(headers: Headers) -> Headers:
    """The headers a proxy may forward: without the standard hop-by-hop ones
    and without those the Connection header names (RFC 9110 §7.6.1)."""
    named = set(header_tokens(headers, b"connection")) - _NEVER_HOP_BY_HOP
    drop = HOP_BY_HOP | named
    return [(key, value) for key, value in headers if key.lower() not in drop]


def connection_named(headers: Headers, lows: list[bytes]) -> set[bytes]:
    """The headers the Connection fields name (hop-by-hop for this message, RFC 9110
    §7.6.1), as `remove_hop_by_hop` drops them; ``lows``: the lower-cased names."""
    values = [value for (_, value), low in zip(headers, lows) if low == b"connection"]
    return set(_tokens(values)) - _NEVER_HOP_BY_HOP


def forwardable(headers: Headers, drop: frozenset[bytes] = frozenset()
                ) -> tuple[Headers, list[bytes]]:
    """``remove_headers(remove_hop_by_hop(headers), *drop)`` in one pass (``drop``
    lower-cased), and the kept headers' lower-cased names, in order (what the
    caller would compute next: each name is lowered once)."""
    lows = [key.lower() if key.__class__ is not bytes else _lower(key) for key, _ in headers]
    gone = HOP_BY_HOP | drop if drop else HOP_BY_HOP
    if b"connection" in lows:
        gone = gone | connection_named(headers, lows)
    kept: Headers = []
    kept_lows: list[bytes] = []
    for header, low in zip(headers, lows):
        if low not in gone:
            kept.append(header)
            kept_lows.append(low)
    return kept, kept_lows


def remove_headers(headers: Headers, *names: bytes) -> Headers:
    """The headers without the named ones (case-insensitive)."""
    drop = {name.lower() for name in names}
    return [(key, value) for key, value in headers if key.lower() not in drop]


# ------------------------------------------------------------- serialisation

_SAFE_TARGET: Final = re.compile(rb"[^\x00-\x20\x7f]+")
_SAFE_VALUE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_SAFE_REASON: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def _b(value: bytes | bytearray | str) -> bytes:
    if value.__class__ is bytes:         # the usual case: bytes(value) is value itself
        return value                     # type: ignore[return-value]
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


# What a serialised head may hold besides its CRLFs: HTAB, SP to "~", and 0x80-0xFF.
_HEAD_TEXT: Final = bytes([0x09, *range(0x20, 0x7f), *range(0x80, 0x100)])
_CRLF: Final = b"\r\n"


def _head_lines(parts: list[bytes], headers, checked: bytes = b"") -> bytes:
    # Refuse to write anything a peer could parse as an extra header or a new
    # message: values come from clients (X-Forwarded-For, cookies) too. ``parts``
    # is a checked start line ending in CRLF; ``checked``: header lines checked before.
    good = _GOOD_NAMES
    start = len(parts)
    head = b""
    try:
        # The usual case: every name a bytes token seen before (_GOOD_NAMES holds
        # only bytes), every value bytes (a str makes join raise: the loop below).
        for name, value in headers:
            if name not in good:
                break
            # four appends, not a tuple and an extend (native list operations compiled)
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
        else:
            head = b"".join(parts)
    except TypeError:                    # an unhashable name, a str value
        pass
    if not head:
        del parts[start:]
        for name, value in headers:
            if name.__class__ is not bytes or value.__class__ is not bytes or name not in good:
                name, value = _b(name), _b(value)
                if not _TOKEN_RE.fullmatch(name):
                    raise ValueError(f"refusing to serialise header {name!r}: {value!r}")
                _good_name(name)
            parts += (name, b": ", value, b"\r\n")
        head = b"".join(parts)
    # Every name is a token and the start line is checked: the values are safe when
    # the only bytes outside _HEAD_TEXT are the CRLFs written here, one per line,
    # which one C pass over the head tells (not two regex calls per header).
    if head.translate(None, _HEAD_TEXT) != _CRLF * ((len(parts) - start) // 4 + 1):
        for name, value in headers:
            if not _SAFE_VALUE.fullmatch(_b(value)):
                raise ValueError(f"refusing to serialise header {_b(name)!r}: {_b(value)!r}")
        raise ValueError(f"refusing to serialise start line {parts[:start]!r}")
    return b"".join((head, checked, _CRLF)) if checked else head + _CRLF


# Methods known to be tokens (a set lookup instead of the regex for these)
_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                      b"PROPFIND", b"PROPPATCH", b"REPORT", b"MKCOL", b"MKCALENDAR", b"MOVE",
                      b"COPY", b"LOCK", b"UNLOCK"})


def serialize_request_head(method: bytes | str, target: bytes | str, headers,
                           version: bytes = b"1.1") -> bytes:
    """Request line and headers, ending with the empty line."""
    method, target = _b(method), _b(target)
    if not (method in _METHODS or _TOKEN_RE.fullmatch(method)) or not target or (
            target.translate(None, _TARGET_CHARS) if len(target) > _SHORT
            else not _SAFE_TARGET.fullmatch(target)):
        raise ValueError(f"refusing to serialise request line {method!r} {target!r}")
    return _head_lines([method, b" ", target, b" HTTP/", version, b"\r\n"], headers)


def serialize_response_head(status: int, reason: bytes | str | None, headers,
                            version: bytes = b"1.1", *, checked: bytes = b"") -> bytes:
    """Status line and headers, ending with the empty line. A missing reason
    becomes the standard phrase. ``checked``: more header lines (``Name: value``
    CRLF each), made and checked before (webheaders.missing_lines), sent last."""
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    reason = _b(reason)
    if not 100 <= status <= 999 or not _SAFE_REASON.fullmatch(reason):
        raise ValueError(f"refusing to serialise status line {status} {reason!r}")
    return _head_lines([b"HTTP/", version, b" %d " % status, reason, b"\r\n"], headers, checked)


LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body. Empty data gives b"" because an empty
    chunk would end the body."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers=()) -> bytes:
    """The terminating chunk, with optional trailers."""
    if not trailers:
        return LAST_CHUNK
    return _head_lines([b"0\r\n"], trailers)
