"""h2rules: an HTTP/2 stream's headers as the HTTP/1.1 pipeline takes them, the
response the other way, and the frame guard's limits (fed whole and byte by byte)."""
from __future__ import annotations

import pytest

from carbotui.protocols import h2rules, http11
from carbotui.protocols.h2rules import FrameGuard, Refusal, request_from_h2

LIMIT = 16384
BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"mail.demo.test"),
        (b":path", b"/home/user02@demo.test/inbox?x=1")]


def convert(headers, ended=True, limit=LIMIT):
    return request_from_h2(headers, ended=ended, max_header_list_size=limit)


def test_pseudo_headers_become_the_request_line_and_host():
    req = convert(BASE + [(b"user-agent", b"nghttp2"), (b"accept", b"*/*")])
    assert isinstance(req, http11.Request)
    assert (req.method, req.target, req.version) == (b"GET", b"/home/user02@demo.test/inbox?x=1",
                                                      b"2.0")
    assert req.headers[0] == (b"host", b"mail.demo.test")
    assert http11.get_header(req.headers, b"user-agent") == b"nghttp2"
    assert req.body_mode is http11.NO_BODY
    assert not any(name.startswith(b":") for name, _ in req.headers)


def test_split_cookies_are_joined_into_one_field():
    req = convert(BASE + [(b"cookie", b"a=1"), (b"accept", b"*/*"),
                          (b"cookie", b"ZM_AUTH_TOKEN=0_x")])
    assert http11.get_all(req.headers, b"cookie") == [b"a=1; ZM_AUTH_TOKEN=0_x"]


def test_body_framing_follows_content_length_else_chunked():
    post = [(b":method", b"POST")] + BASE[1:]
    assert convert(post + [(b"content-length", b"12")], ended=False).body_mode == \
        http11.BodyMode.of_length(12)
    assert convert(post, ended=False).body_mode is http11.CHUNKED
    assert convert(post + [(b"content-length", b"12")], ended=True).body_mode is http11.NO_BODY
    assert convert(post + [(b"content-length", b"1x")], ended=False) == \
        Refusal(400, "malformed Content-Length")
    assert convert(post + [(b"content-length", b"1"), (b"content-length", b"2")],
                   ended=False).status == 400


def test_host_without_authority_is_kept_and_a_different_one_refused():
    no_authority = [h for h in BASE if h[0] != b":authority"]
    req = convert(no_authority + [(b"host", b"a.demo.test")])
    assert http11.get_all(req.headers, b"host") == [b"a.demo.test"]
    assert convert(BASE + [(b"host", b"other.test")]).status == 400
    same = convert(BASE + [(b"host", b"mail.demo.test")])
    assert http11.get_all(same.headers, b"host") == [b"mail.demo.test"]


@pytest.mark.parametrize("headers, why", [
    (BASE + [(b"connection", b"close")], "connection-specific"),
    (BASE + [(b"transfer-encoding", b"chunked")], "connection-specific"),
    (BASE + [(b"upgrade", b"websocket")], "connection-specific"),
    (BASE + [(b"te", b"gzip")], "connection-specific"),
    (BASE + [(b"X-Upper", b"1")], "malformed header"),
    (BASE + [(b"x-crlf", b"a\r\nx-injected: 1")], "malformed header"),
    (BASE + [(b"x-nul", b"a\x00b")], "malformed header"),
    ([(b"accept", b"*/*")] + BASE, "misplaced"),
    (BASE + [(b":path", b"/again")], "misplaced"),
    (BASE[1:], ":method"),
    ([h for h in BASE if h[0] != b":path"], ":path"),
    ([h for h in BASE if h[0] != b":path"] + [(b":path", b"relative")], ":path"),
    ([(b":method", b"CONNECT"), (b":authority", b"x:443"), (b":path", b"/")], "CONNECT"),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"u@host"),
      (b":path", b"/")], ":authority"),
])
def test_malformed_requests_are_refused_400(headers, why):
    got = convert(headers)
    assert isinstance(got, Refusal) and got.status == 400 and why in got.reason, got


def test_te_trailers_is_allowed_and_dropped_later_as_hop_by_hop():
    req = convert(BASE + [(b"te", b"trailers")])
    assert isinstance(req, http11.Request)
    assert http11.remove_hop_by_hop(req.headers) == [(b"host", b"mail.demo.test")]


def test_connect_becomes_a_request_the_pipeline_refuses():
    req = convert([(b":method", b"CONNECT"), (b":authority", b"mbox1:7143")])
    assert (req.method, req.target) == (b"CONNECT", b"mbox1:7143")


def test_header_list_over_the_limit_gets_431():
    big = BASE + [(b"x-big", b"a" * 400)]
    size = h2rules.header_list_size(big)
    assert size == sum(len(n) + len(v) + 32 for n, v in big)
    assert isinstance(convert(big, limit=size), http11.Request)
    assert convert(big, limit=size - 1) == Refusal(431, "header list larger than allowed")


def test_response_headers_drop_connection_specific_fields():
    resp = http11.Response(200, b"OK", b"1.1", [
        (b"Content-Type", b"text/html"), (b"Connection", b"close, X-Secret"),
        (b"Keep-Alive", b"timeout=5"), (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"), (b"Proxy-Connection", b"x"), (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"), (b"Content-Length", b"5"), (b"Trailer", b"x")],
        http11.BodyMode.of_length(5))
    assert h2rules.response_headers(resp) == [
        (b":status", b"200"), (b"content-type", b"text/html"), (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"), (b"content-length", b"5")]


# ------------------------------------------------------------------ frames

def frame(kind: int, flags: int = 0, stream: int = 1, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + stream.to_bytes(4, "big") + payload)


def feed(guard: FrameGuard, data: bytes, *, bytewise: bool, now: float = 0.0):
    if not bytewise:
        return guard.feed(data, now)
    for i in range(len(data)):
        problem = guard.feed(data[i:i + 1], now)
        if problem:
            return problem
    return None


def guard(**kw) -> FrameGuard:
    args = dict(max_header_block=1000, burst=5, rate=1.0, now=0.0)
    args.update(kw)
    return FrameGuard(**args)


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_continuation_flood_is_stopped_at_the_header_block_limit(bytewise):
    g = guard()
    data = h2rules.PREFACE + frame(h2rules.SETTINGS, stream=0)
    data += frame(h2rules.HEADERS, 0, 1, b"h" * 400)                  # no END_HEADERS
    data += frame(h2rules.CONTINUATION, 0, 1, b"c" * 400)
    assert feed(g, data, bytewise=bytewise) is None and g.in_block
    problem = feed(g, frame(h2rules.CONTINUATION, 0, 1, b"c" * 400), bytewise=bytewise)
    assert problem == "header block over 1000 bytes"


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_header_block_ends_with_end_headers_and_the_next_starts_afresh(bytewise):
    g = guard()
    data = h2rules.PREFACE
    for stream in (1, 3, 5):
        data += frame(h2rules.HEADERS, 0, stream, b"h" * 600)
        data += frame(h2rules.CONTINUATION, h2rules.END_HEADERS, stream, b"c" * 300)
        data += frame(h2rules.DATA, h2rules.END_STREAM, stream, b"d" * 5000)   # payload skipped
    assert feed(g, data, bytewise=bytewise) is None
    assert not g.in_block and g.frames == 9 and g.cheap == 0


@pytest.mark.parametrize("kind, flags, payload", [
    (h2rules.RST_STREAM, 0, b"\0\0\0\x08"), (h2rules.PING, 0, b"p" * 8),
    (h2rules.SETTINGS, 0, b""), (h2rules.PRIORITY, 0, b"\0" * 5), (h2rules.DATA, 0, b""),
    (0x42, 0, b"unknown"), (h2rules.CONTINUATION, 0, b""),
])
def test_cheap_frames_are_bounded_by_the_bucket(kind, flags, payload):
    g = guard()
    start = h2rules.PREFACE
    if kind == h2rules.CONTINUATION:
        start += frame(h2rules.HEADERS, 0, 1, b"h")
    assert feed(g, start + frame(kind, flags, 1, payload) * 5, bytewise=False) is None
    problem = feed(g, frame(kind, flags, 1, payload), bytewise=False)
    assert problem and "too many control frames" in problem


def test_the_bucket_refills_with_time_and_data_frames_cost_nothing():
    g = guard()
    ping = frame(h2rules.PING, 0, 0, b"p" * 8)
    assert g.feed(h2rules.PREFACE + ping * 5, 0.0) is None
    assert g.feed(frame(h2rules.DATA, 0, 1, b"x" * 100) * 50, 0.0) is None
    assert g.feed(frame(h2rules.DATA, h2rules.END_STREAM, 1), 0.0) is None   # empty, but ends
    assert g.feed(ping, 0.5) is not None                 # half a token back: not enough
    assert g.feed(ping, 2.0) is None                     # 1/s: one more by now
    assert g.feed(ping * 5, 100.0) is None               # never more than the burst
    assert g.feed(ping, 100.0) is not None
