"""HTTP/2 (RFC 9113) as the web proxy's HTTP/1.1 pipeline sees it: sans-IO rules.

The h2 package is the protocol state machine (carbotui/proxy/h2conn.py drives it);
this module holds what is ours and pure:

* ``request_from_h2``: a stream's header list -> an ``http11.Request`` for the same
  pipeline as HTTP/1.1 (``:authority`` becomes Host, split ``cookie`` fields are
  joined (§8.2.3), the body is framed by Content-Length or, without one, chunked
  to the upstream), or a ``Refusal`` (431 over the header list limit, 400 for a
  malformed request, §8.1.1).
* ``response_headers``: an upstream's HTTP/1.1 response -> an h2 header list
  (``:status``, lower-case names, without the connection-specific fields §8.2.2
  forbids).
* ``FrameGuard``: a scan of the raw frame headers the client sends, before h2
  parses them, for what h2 itself does not bound: a header block (HEADERS +
  CONTINUATION without END_HEADERS, CVE-2024-27316) larger than the limit, and
  floods of frames that cost us work but carry no request (RST_STREAM — the
  "rapid reset" CVE-2023-44487 —, PING, SETTINGS, PRIORITY, empty DATA,
  CVE-2019-9512/9515/9516/9518), counted in a token bucket per connection.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from carbotui.protocols import http11

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"       # RFC 9113 §3.4
VERSION = b"2.0"                                    # Request.version of an h2 stream

# RFC 9113 §8.2.2: fields that are connection-specific in HTTP/1.1 and must not
# appear in HTTP/2 (``te`` only as "trailers", which is hop-by-hop to us anyway).
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade", b"te"})
_DROP_FROM_RESPONSE = CONNECTION_SPECIFIC | http11.HOP_BY_HOP

_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")         # lower case only (§8.2.1)
_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")        # no CR, LF, NUL (§8.2.1)
_DIGITS = re.compile(rb"[0-9]{1,18}")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(rb"[^\x00-\x20\x7f]+")
_AUTHORITY = re.compile(rb"[^\x00-\x20\x7f/?#@]+")

HEADER_ENTRY_OVERHEAD = 32          # RFC 9113 §6.5.2 / RFC 7541 §4.1: name + value + 32


@dataclass(frozen=True, slots=True)
class Refusal:
    """The stream gets this status (and nothing reaches an upstream)."""
    status: int
    reason: str


def header_list_size(headers) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE's measure of a header list (RFC 9113 §6.5.2)."""
    return sum(len(n) + len(v) + HEADER_ENTRY_OVERHEAD for n, v in headers)


def request_from_h2(headers, *, ended: bool, max_header_list_size: int
                    ) -> http11.Request | Refusal:
    """The request a stream's header list asks for, as the HTTP/1.1 pipeline takes
    it. ``ended``: the HEADERS frame had END_STREAM (no body)."""
    if header_list_size(headers) > max_header_list_size:
        return Refusal(431, "header list larger than allowed")
    pseudo: dict[bytes, bytes] = {}
    fields: http11.Headers = []
    cookies: list[bytes] = []
    host = None
    lengths: list[bytes] = []
    for name, value in headers:
        if name.startswith(b":"):
            if fields or cookies or name in pseudo:   # pseudo-fields first, once (§8.3)
                return Refusal(400, "misplaced or repeated pseudo-header")
            pseudo[name] = value
            continue
        if not _NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            return Refusal(400, "malformed header field")
        if name in CONNECTION_SPECIFIC and not (name == b"te" and value == b"trailers"):
            return Refusal(400, "connection-specific header field")
        if name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            if host is not None:
                return Refusal(400, "more than one Host header")
            host = value
        else:
            if name == b"content-length":
                lengths.append(value)
            fields.append((name, value))
    method = pseudo.get(b":method")
    authority = pseudo.get(b":authority")
    if method is None or not _METHOD.fullmatch(method):
        return Refusal(400, "missing or malformed :method")
    if authority is not None and not _AUTHORITY.fullmatch(authority):
        return Refusal(400, "malformed :authority")
    if method == b"CONNECT":
        # §8.5: only :method and :authority. The pipeline refuses CONNECT (405).
        if authority is None or b":path" in pseudo or b":scheme" in pseudo:
            return Refusal(400, "malformed CONNECT")
        target = authority
    else:
        target = pseudo.get(b":path")
        if not target or not _PATH.fullmatch(target) or pseudo.get(b":scheme") is None:
            return Refusal(400, "missing or malformed :path or :scheme")
        if target != b"*" and not target.startswith(b"/"):
            return Refusal(400, "malformed :path")
    if authority is not None and host is not None and host != authority:
        return Refusal(400, "Host differs from :authority")     # §8.3.1
    if authority is not None and b"@" in authority:
        return Refusal(400, "userinfo in :authority")          # §8.3.1
    host = authority if authority is not None else host
    out: http11.Headers = []
    if host is not None:
        out.append((b"host", host))
    out += fields
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))          # §8.2.3
    if ended:
        mode = http11.NO_BODY
    elif lengths:
        if len(set(lengths)) != 1 or not _DIGITS.fullmatch(lengths[0]):
            return Refusal(400, "malformed Content-Length")
        mode = http11.BodyMode.of_length(int(lengths[0]))
        if len(lengths) > 1:
            out = [(n, v) for n, v in out if n != b"content-length"] + [
                (b"content-length", lengths[0])]
    else:
        mode = http11.CHUNKED          # a body of unknown length: chunked to the upstream
    return http11.Request(method, target, VERSION, out, mode)


def response_headers(resp: http11.Response) -> list[tuple[bytes, bytes]]:
    """The HTTP/1.1 response head as an h2 header list (§8.3.2, §8.2.2)."""
    out = [(b":status", b"%d" % resp.status)]
    for name, value in resp.headers:
        low = name.lower()
        if low not in _DROP_FROM_RESPONSE:
            out.append((low, value))
    return out


# ------------------------------------------------------------------ frames

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4
FRAME_HEADER = 9
# Frames that make us work (an answer, a state change, a cancelled request) without
# moving a request forward: their sum is what the bucket bounds (with unknown frame
# types, which §5.5 says to ignore, and empty DATA / CONTINUATION frames).
CHEAP = frozenset({PRIORITY, RST_STREAM, SETTINGS, PING})


class Budget:
    """A token bucket: ``burst`` at once, refilled at ``rate`` per second."""

    def __init__(self, burst: float, rate: float, now: float):
        self.burst, self.rate = burst, rate
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class FrameGuard:
    """Scans a client's byte stream frame by frame (only the 9-byte frame headers
    are read; the payloads are h2's). ``feed`` returns None, or why the connection
    must end with GOAWAY(ENHANCE_YOUR_CALM)."""

    def __init__(self, *, max_header_block: int, burst: int, rate: float, now: float):
        self.max_header_block = max_header_block
        self.budget = Budget(burst, rate, now)
        self._preface = len(PREFACE)    # preface bytes still to pass (h2 checks them)
        self._head = b""                # a frame header split across reads
        self._skip = 0                  # payload bytes of the current frame still to pass
        self.block = 0                  # bytes of the header block in progress
        self.in_block = False           # HEADERS seen, END_HEADERS not yet
        self.frames = 0
        self.cheap = 0

    def feed(self, data: bytes, now: float) -> str | None:
        view = memoryview(data)
        pos, end = 0, len(view)
        if self._preface:
            n = min(self._preface, end)
            self._preface -= n
            pos = n
        while pos < end:
            if self._skip:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                continue
            need = FRAME_HEADER - len(self._head)
            piece = bytes(view[pos:pos + need])
            pos += len(piece)
            self._head += piece
            if len(self._head) < FRAME_HEADER:
                break
            head, self._head = self._head, b""
            problem = self._frame(int.from_bytes(head[:3], "big"), head[3], head[4], now)
            if problem:
                return problem
            self._skip = int.from_bytes(head[:3], "big")
        return None

    def _frame(self, length: int, kind: int, flags: int, now: float) -> str | None:
        self.frames += 1
        if kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                self.block = 0
            self.block += length
            self.in_block = not flags & END_HEADERS
            if self.block > self.max_header_block:
                return f"header block over {self.max_header_block} bytes"
            if kind == CONTINUATION and length == 0 and self.in_block:
                return self._cheap(now)          # empty CONTINUATIONs: pure cost
            return None
        if kind in CHEAP or kind > CONTINUATION \
                or (kind == DATA and length == 0 and not flags & END_STREAM):
            return self._cheap(now)
        return None

    def _cheap(self, now: float) -> str | None:
        self.cheap += 1
        if not self.budget.take(now):
            return "too many control frames (resets, pings, settings, empty frames)"
        return None
