"""Byte transcripts for carbotui.protocols.http11: what goes in, which events come out."""
from __future__ import annotations

import pytest

from carbotui.protocols.http11 import (
    CHUNKED, LAST_CHUNK, NO_BODY, UNTIL_CLOSE, UPGRADE, BodyMode, Data, EndOfMessage,
    ParseError, Request, RequestParser, Response, ResponseParser, chunk, expects_continue,
    get_all, get_header, header_tokens, last_chunk, remove_hop_by_hop,
    serialize_request_head, serialize_response_head,
)

from tests.support.transcripts import merged


def feed(parser, data: bytes, step: int | None = None):
    if step is None:
        return merged(parser.feed(data))
    events = []
    for i in range(0, len(data), step):
        events += parser.feed(data[i:i + step])
    return merged(events)


def error_of(data: bytes, **limits) -> ParseError:
    events = RequestParser(**limits).feed(data)
    assert events and isinstance(events[-1], ParseError), events
    return events[-1]


# ------------------------------------------------------------------ requests

def test_simple_get():
    p = RequestParser()
    events = feed(p, b"GET /mail?x=1 HTTP/1.1\r\nHost: mail.demo.test\r\nUser-Agent: t\r\n\r\n")
    assert events == [
        Request(b"GET", b"/mail?x=1", b"1.1",
                [(b"Host", b"mail.demo.test"), (b"User-Agent", b"t")], NO_BODY),
        EndOfMessage([]),
    ]
    assert p.done and p.keep_alive


def test_header_values_lose_surrounding_whitespace_and_keep_inner():
    (req, _) = feed(RequestParser(), b"GET / HTTP/1.1\r\nHost:\t a b \t\r\nX-E:\r\n\r\n")
    assert req.headers == [(b"Host", b"a b"), (b"X-E", b"")]


def test_pipelined_requests_wait_for_start_next():
    p = RequestParser()
    data = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    first = p.feed(data)
    assert [type(e) for e in first] == [Request, EndOfMessage]
    assert first[0].target == b"/a"
    assert p.buffered > 0
    second = merged(p.start_next())
    assert second[0].target == b"/b" and second[1] == Data(b"abc")
    assert isinstance(second[2], EndOfMessage)
    third = p.start_next()
    assert third[0].target == b"/c"
    assert not p.keep_alive
    with pytest.raises(RuntimeError):
        p.start_next()


def test_start_next_before_end_of_message_is_a_bug():
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(RuntimeError):
        p.start_next()


def test_bytes_fed_while_paused_are_kept():
    p = RequestParser()
    p.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert p.feed(b"GET /b HTTP/1.1\r\n") == []
    assert p.feed(b"Host: h\r\n\r\n") == []
    assert [e.target for e in p.start_next() if isinstance(e, Request)] == [b"/b"]


POST = (b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n"
        b"Content-Type: text/plain\r\n\r\nhello world")


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7, 16, 50])
def test_post_with_content_length_in_awkward_splits(step):
    p = RequestParser()
    events = feed(p, POST, step)
    assert events[0].body_mode == BodyMode.of_length(11)
    assert events[1:] == [Data(b"hello world"), EndOfMessage([])]


def test_body_bytes_are_streamed_not_accumulated():
    p = RequestParser()
    p.feed(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 300000\r\n\r\n")
    piece = b"x" * 100000
    assert p.feed(piece) == [Data(piece)]
    assert p.buffered == 0
    assert p.feed(piece + piece + b"GET") == [Data(piece + piece), EndOfMessage([])]
    assert p.buffered == 3


def test_content_length_zero():
    events = feed(RequestParser(), b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert events[0].body_mode == BodyMode.of_length(0)
    assert events[1] == EndOfMessage([])


CHUNKED_POST = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;name=value;flag\r\nhello\r\n"
                b"6 ; q=\"a \\\"b\\\"\"\r\n world\r\n"
                b"A\r\n0123456789\r\n"
                b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")


@pytest.mark.parametrize("step", [None, 1, 4, 13])
def test_chunked_with_extensions_and_trailers(step):
    p = RequestParser()
    events = feed(p, CHUNKED_POST, step)
    assert events[0].body_mode == CHUNKED
    assert events[1:] == [
        Data(b"hello world0123456789"),
        EndOfMessage([(b"X-Checksum", b"abc"), (b"X-Other", b"1")]),
    ]
    assert p.keep_alive


def test_chunked_without_trailers_then_pipelined():
    p = RequestParser()
    events = p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
                    b"3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert merged(events)[1:] == [Data(b"abc"), EndOfMessage([])]
    assert p.start_next()[0].target == b"/next"


def test_leading_empty_lines_are_skipped():
    events = feed(RequestParser(), b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert events[0].target == b"/"


def _keep_alive(parser, head: bytes) -> bool:
    """Whether a fresh ``parser`` keeps the connection open after ``head``."""
    parser.feed(head)
    return parser.keep_alive


def test_http10_keep_alive_rules():
    assert not _keep_alive(RequestParser(), b"GET / HTTP/1.0\r\n\r\n")
    assert _keep_alive(RequestParser(), b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert not _keep_alive(RequestParser(),
                           b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n")


def test_expect_100_continue_is_visible():
    p = RequestParser()
    events = p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
                    b"Expect: 100-Continue\r\n\r\n")
    assert events == [events[0]]                  # head only; body not here yet
    assert expects_continue(events[0].headers)
    assert not expects_continue([(b"Host", b"h")])
    assert merged(p.feed(b"ok")) == [Data(b"ok"), EndOfMessage([])]


def test_websocket_upgrade_request_and_remainder():
    p = RequestParser()
    events = p.feed(b"GET /ws/echo HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n\x81\x85abcd")
    assert events[0].body_mode == UPGRADE
    assert events[1] == EndOfMessage([])
    p.feed(b"efgh")
    assert p.take_remainder() == b"\x81\x85abcdefgh"
    assert not p.keep_alive
    with pytest.raises(RuntimeError):
        p.feed(b"more")


def test_upgrade_refused_means_plain_http_continues():
    p = RequestParser()
    p.feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
           b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert p.start_next()[0].target == b"/b"


def test_upgrade_with_a_body_is_a_plain_request():
    events = feed(RequestParser(), b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n"
                                   b"Upgrade: websocket\r\nContent-Length: 2\r\n\r\nhi")
    assert events[0].body_mode == BodyMode.of_length(2)


def test_connect_is_a_tunnel():
    events = feed(RequestParser(), b"CONNECT mbox1:443 HTTP/1.1\r\nHost: mbox1:443\r\n\r\n")
    assert events[0].body_mode == UPGRADE and events[0].target == b"mbox1:443"


def test_eof_between_messages_is_clean_and_mid_body_is_not():
    p = RequestParser()
    assert p.feed_eof() == []
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
    assert p.feed_eof() == [ParseError(400, "connection closed in the middle of the message body")]
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHo")
    assert isinstance(p.feed_eof()[0], ParseError)


# ------------------------------------------------------------ smuggling cases

H = b"POST / HTTP/1.1\r\nHost: h\r\n"


@pytest.mark.parametrize("data, status", [
    # Content-Length and Transfer-Encoding together (CL.TE / TE.CL)
    (H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400),
    # duplicate / listed / non-digit Content-Length
    (H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n", 400),
    (H + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\n", 400),
    (H + b"Content-Length: 4, 5\r\n\r\n", 400),
    (H + b"Content-Length: 4,4\r\n\r\n", 400),
    (H + b"Content-Length: +4\r\n\r\n", 400),
    (H + b"Content-Length: -1\r\n\r\n", 400),
    (H + b"Content-Length: 0x4\r\n\r\n", 400),
    (H + b"Content-Length: 4 4\r\n\r\n", 400),
    (H + b"Content-Length: \r\n\r\n", 400),
    (H + "Content-Length: \u0664\r\n\r\n".encode(), 400),      # Arabic-Indic digit
    (H + b"Content-Length: 1234567890123456789\r\n\r\n", 400),
    # Transfer-Encoding other than exactly chunked
    (H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    (H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (H + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400),
    (H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (H + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    (H + b"Transfer-Encoding: chunked;q=1\r\n\r\n", 400),
    (H + b"Transfer-Encoding: , chunked\r\n\r\n", 400),
    (H + b"Transfer-Encoding: \x0bchunked\r\n\r\n", 400),
    (H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # header syntax
    (H + b"Transfer-Encoding : chunked\r\n\r\n", 400),         # space before colon
    (H + b"Content-Length\t: 4\r\n\r\n", 400),
    (H + b"X-A: 1\r\n folded\r\n\r\n", 400),                   # obs-fold
    (H + b"X-A: 1\r\n\tfolded\r\n\r\n", 400),
    (H + b" X-A: 1\r\n\r\n", 400),
    (H + b"X(A): 1\r\n\r\n", 400),                             # not a token
    (H + b"X\x00A: 1\r\n\r\n", 400),
    (H + b": 1\r\n\r\n", 400),
    (H + b"NoColon\r\n\r\n", 400),
    (H + b"X-A: a\x00b\r\n\r\n", 400),                         # NUL in value
    (H + b"X-A: a\rb\r\n\r\n", 400),                           # bare CR in value
    (H + b"X-A: a\x1bb\r\n\r\n", 400),
    (H + b"X-A: a\nContent-Length: 4\r\n\r\n", 400),           # bare LF
    (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400),
    (b"\n", 400),
    # request line
    (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),                                   # HTTP/0.9
    (b"GET / http/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/2\r\nHost: h\r\n\r\n", 505),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),    # TLS ClientHello
    # Host
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n", 400),
])
def test_smuggling_and_syntax_rejections(data, status):
    assert error_of(data).status == status


BAD_CHUNKS = [
    b"g\r\n",                       # non-hex
    b"-5\r\nhello\r\n",             # negative
    b"0x5\r\nhello\r\n",
    b" 5\r\nhello\r\n",
    b"5 \r\nhello\r\n",
    b"\r\n",                        # empty size
    b"1" * 17 + b"\r\n",            # too many digits
    b"0" * 17 + b"5\r\n",
    b"5;\r\nhello\r\n",             # extension without a name
    b"5;a=\r\nhello\r\n",
    b"5;a=\"x\r\nhello\r\n",        # unterminated quoted string
    b"5;a\rb\r\nhello\r\n",         # CR inside an extension
    b"5;a\nb\r\nhello\r\n",         # LF inside an extension
    b"5\nhello\r\n",                # bare LF after the size
    b"5\r\nhelloXY",                # data not followed by CRLF
    b"5\r\nhello\n",
    b"5\r\nhello\r\n0\r\nX-A: 1\n\r\n",    # bare LF in trailers
    b"5\r\nhello\r\n0\r\nX-A : 1\r\n\r\n",
    b"5\r\nhello\r\n0\r\n folded\r\n\r\n",
]


@pytest.mark.parametrize("body", BAD_CHUNKS)
@pytest.mark.parametrize("step", [None, 1])
def test_bad_chunked_bodies(body, step):
    p = RequestParser()
    events = feed(p, H + b"Transfer-Encoding: chunked\r\n\r\n" + body, step)
    assert isinstance(events[-1], ParseError) and events[-1].status == 400, events
    assert not p.keep_alive
    assert p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []   # nothing after an error


def test_chunk_line_too_long():
    body = b"5;" + b"a" * 5000
    assert error_of(H + b"Transfer-Encoding: chunked\r\n\r\n" + body).status == 400


# -------------------------------------------------------------------- limits

def test_request_line_limit_is_414():
    line = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n"
    assert error_of(line, max_start_line=100).status == 414
    # detected before the line ends, so a client cannot make us buffer forever
    assert error_of(b"GET /" + b"a" * 200, max_start_line=100).status == 414
    ok = RequestParser(max_start_line=len(line) - 2).feed(line + b"Host: h\r\n\r\n")
    assert isinstance(ok[0], Request)


def test_header_block_limits_are_431():
    many = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n"
    assert error_of(many).status == 431
    assert isinstance(RequestParser(max_headers=101).feed(many)[0], Request)
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n"
    assert error_of(big).status == 431
    assert error_of(big[:17000]).status == 431            # also while incomplete
    assert isinstance(RequestParser(max_header_bytes=32768).feed(big)[0], Request)


def test_trailer_limits():
    body = b"0\r\n" + b"X-T: 1\r\n" * 20 + b"\r\n"
    events = RequestParser(max_headers=10).feed(H + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert events[-1].status == 431


def test_body_limit_is_413():
    assert error_of(H + b"Content-Length: 101\r\n\r\n", max_body=100).status == 413
    p = RequestParser(max_body=8)
    events = p.feed(H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n")
    assert merged(events)[1:] == [Data(b"hello"), ParseError(413, "body larger than allowed")]


def test_huge_input_byte_by_byte_is_linear():
    # 16 KiB of header block fed one byte at a time: no rescans of old bytes
    # (would be ~130M comparisons if each feed searched from the start).
    p = RequestParser(max_header_bytes=20000, max_headers=2000)
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Header-Name: value\r\n" * 700 + b"\r\n"
    events = []
    for i in range(len(data)):
        events += p.feed(data[i:i + 1])
    assert isinstance(events[0], Request) and len(events[0].headers) == 701


# ----------------------------------------------------------------- responses

def test_response_with_length():
    p = ResponseParser()
    events = feed(p, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello", 3)
    assert events == [
        Response(200, b"OK", b"1.1", [(b"Content-Length", b"5"), (b"Server", b"x")],
                 BodyMode.of_length(5)),
        Data(b"hello"), EndOfMessage([]),
    ]
    assert p.keep_alive


def test_response_chunked_then_next_response():
    p = ResponseParser()
    events = feed(p, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert events[1:] == [Data(b"abc"), EndOfMessage([])]
    events = p.start_next(b"DELETE")
    assert events[0].status == 204 and events[0].body_mode == NO_BODY


def test_response_until_close():
    p = ResponseParser()
    events = feed(p, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome")
    assert events[0].body_mode == UNTIL_CLOSE and events[1] == Data(b"some")
    assert p.feed(b" more") == [Data(b" more")]
    assert p.feed_eof() == [EndOfMessage([])]
    assert not p.keep_alive


def test_response_transfer_encoding_not_ending_in_chunked_reads_until_close():
    events = ResponseParser().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz")
    assert events[0].body_mode == UNTIL_CLOSE


def test_head_response_has_no_body_even_with_length():
    p = ResponseParser(request_method=b"HEAD")
    events = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert events[0].body_mode == NO_BODY and events[1] == EndOfMessage([])
    assert p.keep_alive


@pytest.mark.parametrize("step", [None, 1, 5])
def test_head_on_a_kept_alive_connection_is_framed_without_a_body(step):
    # L1: GET, then HEAD on the same upstream connection, then GET again. Read as a GET,
    # the HEAD answer would swallow the next response as its 500-byte body.
    p = ResponseParser(request_method=b"GET")
    events = feed(p, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", step)
    assert events[1:] == [Data(b"ok"), EndOfMessage([])]
    head_answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"
                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert p.start_next(b"HEAD") == []
    events = feed(p, head_answer, step)
    assert events[0].body_mode == NO_BODY and events[-1] == EndOfMessage([])
    assert [e for e in events if isinstance(e, Data)] == []
    events = p.start_next(b"HEAD")
    assert events[0].body_mode == NO_BODY and events[1] == EndOfMessage([])
    assert p.start_next(b"GET") == []
    events = feed(p, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew", step)
    assert events[1:] == [Data(b"new"), EndOfMessage([])]


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status):
    p = ResponseParser()
    events = p.feed(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert events[0].body_mode == NO_BODY and events[1] == EndOfMessage([])


def test_100_continue_then_final_response():
    p = ResponseParser(request_method=b"POST")
    events = feed(p, b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 5)
    assert [(e.status, e.informational) for e in events if isinstance(e, Response)] == [
        (100, True), (103, True), (200, False)]
    assert events[-2:] == [Data(b"ok"), EndOfMessage([])]


def test_101_switching_protocols_remainder():
    p = ResponseParser()
    events = p.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n\x81\x02hi")
    assert events[0].body_mode == UPGRADE and events[1] == EndOfMessage([])
    assert not p.keep_alive
    assert p.take_remainder() == b"\x81\x02hi"


def test_connect_2xx_is_a_tunnel():
    events = ResponseParser(request_method=b"CONNECT").feed(b"HTTP/1.1 200 OK\r\n\r\n")
    assert events[0].body_mode == UPGRADE


def test_response_http10_and_connection_close():
    assert not _keep_alive(ResponseParser(), b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not _keep_alive(ResponseParser(),
                           b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_status_line_without_reason():
    events = ResponseParser().feed(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n")
    assert events[0].status == 404 and events[0].reason == b""


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a\r\n b\r\n\r\n",
])
def test_bad_responses_are_502(data):
    events = ResponseParser().feed(data)
    assert isinstance(events[-1], ParseError) and events[-1].status == 502


def test_response_cut_short_is_an_error():
    p = ResponseParser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert p.feed_eof()[0].status == 502


# ------------------------------------------------------------------- helpers

def test_header_lookup_is_case_insensitive():
    headers = [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"Connection", b"Close, X-A")]
    assert get_header(headers, b"SET-COOKIE") == b"a=1"
    assert get_header(headers, b"missing", b"d") == b"d"
    assert get_all(headers, b"set-cookie") == [b"a=1", b"b=2"]
    assert header_tokens(headers, b"connection") == [b"close", b"x-a"]


def test_remove_hop_by_hop():
    headers = [
        (b"Host", b"h"), (b"Connection", b"keep-alive, X-Secret, Content-Length, Host"),
        (b"Keep-Alive", b"timeout=5"), (b"Proxy-Connection", b"x"), (b"TE", b"trailers"),
        (b"Trailer", b"X-T"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"websocket"),
        (b"x-secret", b"1"), (b"Content-Length", b"3"), (b"Cookie", b"c=1"),
    ]
    assert remove_hop_by_hop(headers) == [
        (b"Host", b"h"), (b"Content-Length", b"3"), (b"Cookie", b"c=1")]


def test_serialisation_round_trip():
    head = serialize_request_head(b"POST", b"/up", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")])
    body = chunk(b"hello") + chunk(b"") + chunk(b" world") + last_chunk([(b"X-T", b"1")])
    events = feed(RequestParser(), head + body)
    assert events[0].method == b"POST" and events[0].body_mode == CHUNKED
    assert events[1:] == [Data(b"hello world"), EndOfMessage([(b"X-T", b"1")])]
    assert chunk(b"hello") == b"5\r\nhello\r\n" and LAST_CHUNK == b"0\r\n\r\n"

    head = serialize_response_head(404, None, [("Content-Length", "0")])
    assert head == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert serialize_response_head(299, None, []) == b"HTTP/1.1 299 \r\n\r\n"


@pytest.mark.parametrize("headers", [
    [(b"X-A", b"1\r\nSet-Cookie: evil")],
    [(b"X-A", b"1\nX: y")],
    [(b"X-A", b"\x00")],
    [(b"X A", b"1")],
    [(b"", b"1")],
])
def test_serialisation_refuses_header_injection(headers):
    with pytest.raises(ValueError):
        serialize_response_head(200, b"OK", headers)
    with pytest.raises(ValueError):
        serialize_request_head(b"GET", b"/", headers)


def test_serialisation_refuses_bad_start_lines():
    with pytest.raises(ValueError):
        serialize_request_head(b"GET", b"/ HTTP/1.1\r\nX:", [])
    with pytest.raises(ValueError):
        serialize_response_head(200, b"OK\r\nX: y", [])


# ---------------------------------------------------------------------- fuzz

TRANSCRIPTS = [
    (RequestParser, POST + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    (RequestParser, CHUNKED_POST),
    (ResponseParser, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=1\r\npedia\r\n0\r\nT: 1\r\n\r\n"),
    (ResponseParser, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close"),
]


@pytest.mark.parametrize("cls, data", TRANSCRIPTS)
def test_random_splits_give_the_same_events(cls, data):
    import random
    rng = random.Random(7)
    whole = cls()
    expected = merged(whole.feed(data) + whole.feed_eof())
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randrange(1, 12)))
        p, events, last = cls(), [], 0
        for cut in cuts + [len(data)]:
            events += p.feed(data[last:cut])
            last = cut
        assert merged(events + p.feed_eof()) == expected


@pytest.mark.parametrize("cls", [RequestParser, ResponseParser])
def test_fuzz_never_raises(cls):
    import random
    rng = random.Random(11)
    seeds = [data for _, data in TRANSCRIPTS] + [POST, CHUNKED_POST]
    alphabet = b"\r\n:; \t0123456789abcdefABCDEF-,\"\\\x00\x7f\xffGETPOSTHTTP/1.1chunkedContent-Length"
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            op, pos = rng.random(), rng.randrange(len(data) + 1)
            if op < 0.4:
                data[pos:pos] = bytes([rng.choice(alphabet)])
            elif op < 0.7 and pos < len(data):
                del data[pos]
            elif pos < len(data):
                data[pos] = rng.randrange(256)
        p = cls(max_header_bytes=512, max_headers=8)
        step = rng.choice([1, 3, 17, len(data) or 1])
        events = []
        for i in range(0, len(data), step):
            events += p.feed(bytes(data[i:i + step]))
            if p.done and p.keep_alive:
                events += p.start_next()
        events += p.feed_eof()
        errors = [e for e in events if isinstance(e, ParseError)]
        assert len(errors) <= 1 and (not errors or events[-1] is errors[0])


# ------------------------------------------- a head and a large body in one read

BIG = bytes(range(256)) * 80                      # 20,480 bytes: over feed's split size
BIG_READS = [
    (RequestParser, b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(BIG)
     + BIG + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"),           # body, then a pipelined request
    (RequestParser, b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + BIG),
    (ResponseParser, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG) + BIG),
    (ResponseParser, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(BIG) * 2) + BIG),
    (ResponseParser, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(BIG)
     + BIG + b"\r\n0\r\n\r\n"),
    (ResponseParser, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n" + BIG),  # until close
    (ResponseParser, b"HTTP/1.1 204 No Content\r\n\r\n" + BIG),       # no body: the rest waits
    (ResponseParser, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                     b"\r\nhello" + BIG),
    (RequestParser, b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nContent-Length: 9000\r\n\r\n" + BIG),
    (RequestParser, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n" + BIG),  # refused head
    (RequestParser, b"GET / HTTP/1.1\nHost: h\n\n" + BIG),             # bare LF: no CRLF CRLF
    (RequestParser, b"GET / HTTP/1.1\r\nHost: h\r\n" + BIG),           # no end of head at all
    (RequestParser, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + BIG[:8192 - 34]),
]


@pytest.mark.parametrize("cls, data", BIG_READS, ids=[
    "post-then-pipelined", "post-shorter-than-read", "length", "length-cut", "chunked",
    "until-close", "no-body", "continue-then-200", "stray-crlf", "bad-head", "bare-lf",
    "unended-head", "just-at-split"])
def test_a_head_and_a_large_body_in_one_read_as_byte_by_byte(cls, data):
    whole = cls(max_body=1 << 20)
    events = whole.feed(data)
    state = (whole.done, whole.buffered, whole.keep_alive)
    steps = cls(max_body=1 << 20)
    expected = []
    for i in range(0, len(data), 997):          # 997: cuts that fall inside the head too
        expected += steps.feed(data[i:i + 997])
    assert merged(events) == merged(expected)
    assert state == (steps.done, steps.buffered, steps.keep_alive)
    assert merged(events + whole.feed_eof()) == merged(expected + steps.feed_eof())


def test_the_body_of_a_large_read_comes_out_whole_and_once():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG)
    p = ResponseParser()
    events = p.feed(head + BIG)
    assert [type(e) for e in events] == [Response, Data, EndOfMessage]
    assert events[1].data == BIG and p.buffered == 0 and p.done
