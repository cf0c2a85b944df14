"""The per-request shortcuts of issue #16 (HTTPS keep-alive) judge exactly as the code
they replace, on hostile and odd input:

* `http11._parse_fields` remembers the field lines it accepted (`_GOOD_LINES`): a block
  parsed with every line remembered gives what the regex rule gives, a remembered line
  never lets a bad line of its block through, lines with credentials are never kept,
  and the store is bounded;
* the parsers make their events with `_request`, `_response`, `_data`, `_end`: the
  same frozen dataclass objects as the constructors make (equal, same repr and hash,
  still frozen, `dataclasses.replace` works);
* `webrules._plain_path` is one regex search for what were five substring tests;
* `webrules.without_underscored` one search over the names joined;
* `webrules.route_hint` gives one shared RouteHint for a plain balanced request;
* status lines and short request lines accepted before (`_STATUS_LINES`,
  `_REQUEST_LINES`) read the same the second time, whole and byte by byte, bad ones
  and queries are never kept, both are bounded; `_lower` is ``bytes.lower``;
* `serialize_request_head` with known and odd methods;
* `httpconn.HttpConnection` (compiled, or not) serves a Python subclass.
"""
from __future__ import annotations

import dataclasses
import random
import re

import pytest

from carbotui.protocols import http11, webrules
from tests.unit.test_http11_fastpath import LINES, parse_both_ways, reference_fields


def test_remembered_lines_give_what_the_regex_gives():
    rng = random.Random(1616)
    alphabet = b"aZ09-_:; \t\r\n\x00\x7f\x80\xff\"(),=x"
    blocks = []
    for _ in range(2000):
        lines = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                 for _ in range(rng.randint(1, 4))]
        blocks.append(b"".join(line + b"\r\n" for line in lines))
    # twice: the second time most good lines are remembered ones
    for _ in range(2):
        for block in blocks:
            got, problem = http11._parse_fields(block)
            assert (got if problem is None else None) == reference_fields(block), block


@pytest.mark.parametrize("bad", [line for line in LINES if reference_fields(line + b"\r\n")
                                 is None])
def test_a_remembered_line_never_carries_a_bad_one_through(bad):
    good = b"User-Agent: bench"
    assert http11._parse_fields(good + b"\r\n")[1] is None           # remembered now
    assert http11._GOOD_LINES.get(good) == (b"User-Agent", b"bench")
    for block in (good + b"\r\n" + bad + b"\r\n", bad + b"\r\n" + good + b"\r\n"):
        got, problem = http11._parse_fields(block)
        assert problem and got == []
        result = parse_both_ways(b"GET / HTTP/1.1\r\nHost: h\r\n" + block + b"\r\n")
        assert isinstance(result[-1], http11.ParseError) and result[-1].status == 400


def test_the_same_head_twice_parses_the_same_whole_and_byte_by_byte():
    head = (b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: x\r\nAccept:  */*  \r\n"
            b"X-Tab:\tv\t\r\n\r\n")
    first = parse_both_ways(head)
    assert parse_both_ways(head) == first
    assert first[0].headers == [(b"Host", b"h"), (b"User-Agent", b"x"), (b"Accept", b"*/*"),
                                (b"X-Tab", b"v")]
    # a response parser shares the store and reads the same lines the same way
    resp = parse_both_ways(b"HTTP/1.1 200 OK\r\nAccept:  */*  \r\nContent-Length: 0\r\n\r\n",
                           http11.ResponseParser)
    assert resp[0].headers == [(b"Accept", b"*/*"), (b"Content-Length", b"0")]


@pytest.mark.parametrize("line", [b"Authorization: Basic dXNlcjpwYXNz", b"cookie: a=1",
                                  b"Set-Cookie: ZM_AUTH_TOKEN=x", b"Proxy-Authorization: x"])
def test_lines_with_credentials_are_never_remembered(line):
    got, problem = http11._parse_fields(line + b"\r\n")
    assert problem is None and len(got) == 1
    assert line not in http11._GOOD_LINES


def test_the_remembered_lines_are_bounded():
    for i in range(http11._GOOD_LINES_MAX * 2 + 10):
        http11._parse_fields(b"X-Seq: %d\r\n" % i)
    long = b"X-Long: " + b"v" * http11._GOOD_LINE_MAX
    http11._parse_fields(long + b"\r\n")
    assert 0 < len(http11._GOOD_LINES) <= http11._GOOD_LINES_MAX
    assert long not in http11._GOOD_LINES
    assert all(len(line) <= http11._GOOD_LINE_MAX for line in http11._GOOD_LINES)


def test_parser_events_are_the_dataclasses_constructors_objects():
    made = [
        (http11._request(b"GET", b"/", b"1.1", [(b"Host", b"a")], http11.NO_BODY),
         http11.Request(b"GET", b"/", b"1.1", [(b"Host", b"a")], http11.NO_BODY)),
        (http11._response(200, b"OK", b"1.1", [], http11.CHUNKED),
         http11.Response(200, b"OK", b"1.1", [], http11.CHUNKED)),
        (http11._data(b"xy"), http11.Data(b"xy")),
        (http11._end([(b"X", b"1")]), http11.EndOfMessage([(b"X", b"1")])),
    ]
    for fast, slow in made:
        assert type(fast) is type(slow) and fast == slow and repr(fast) == repr(slow)
        field = dataclasses.fields(slow)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(fast, field, getattr(slow, field))
        assert dataclasses.replace(fast) == slow
    assert hash(made[2][0]) == hash(made[2][1])
    assert made[1][0].informational is False
    # and what the parsers emit compares equal to what the constructors make
    events = http11.RequestParser().feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2"
                                         b"\r\n\r\nok")
    assert events == [http11.Request(b"POST", b"/x", b"1.1", [(b"Host", b"a"),
                                     (b"Content-Length", b"2")], http11.BodyMode("length", 2)),
                      http11.Data(b"ok"), http11.EndOfMessage([])]


def reference_plain_path(path: bytes) -> bool:
    """_plain_path as it was written before (five substring tests)."""
    return (b"%" not in path and b"\\" not in path and b";" not in path
            and b"//" not in path and b"/." not in path
            and (path[-1:] != b"/" or path == b"/"))


def test_plain_path_is_the_five_substring_tests():
    rng = random.Random(16)
    pieces = [b"/", b"a", b".", b"..", b"%", b"%2e", b";", b"\\", b"//", b"/.", b"./", b"\n",
              b"\x00", b"\xff", b"A", b"?", b"#", b"~", b"-"]
    paths = [b"", b"/", b"//", b"/.", b"/a/", b"/a.b", b"/.well-known", b"/a/./b", b"/a%2f"]
    paths += [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
              for _ in range(20000)]
    for path in paths:
        assert webrules._plain_path(path) == reference_plain_path(path), path


@pytest.mark.parametrize("names", [[], [b"Host"], [b"X_A"], [b"_"], [b"Host", b"a_"],
                                   [b"A", b"B", b"C_D", b"E"], [b"X-A", b"X-B"],
                                   [b"\x5f\x5f"], [b"x" * 300 + b"_"]])
def test_without_underscored_as_before(names):
    req = http11.Request(b"GET", b"/", b"1.1", [(n, b"v_") for n in names], http11.NO_BODY)
    out = webrules.without_underscored(req)
    assert out.headers == [(n, v) for n, v in req.headers if b"_" not in n]
    assert (out is req) == (not any(b"_" in n for n in names))


def test_a_plain_balanced_hint_is_shared_and_equal():
    plain = webrules.route_hint(b"/health", [(b"Host", b"a")])
    assert plain == webrules.RouteHint(webrules.BALANCED) and plain is webrules._BALANCED
    assert webrules.route_hint(b"/x", []) is plain
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.user = "x"                                     # shared, so it must be frozen
    # Basic credentials give their own hint, never the shared one
    basic = webrules.route_hint(b"/x", [(b"Authorization", b"Basic dXNlcjpwYXNz")])
    assert basic is not plain and basic.basic is not None and basic.basic.typed == "user"


def test_the_event_makers_know_which_build_runs():
    # compiled: native stores into a new object; as Python: the constructors (both
    # builds run this file, so both ways are compared with the constructors above)
    assert http11._COMPILED == (not http11.__file__.endswith(".py"))
    ev = http11._end([])
    assert ev == http11.EndOfMessage([]) and type(ev) is http11.EndOfMessage


@pytest.mark.parametrize("line", [b"HTTP/1.1 200 OK", b"HTTP/1.0 404 Not Found", b"HTTP/1.1 204",
                                  b"HTTP/1.1 200 ", b"HTTP/1.1 099 Low", b"HTTP/2.0 200 OK",
                                  b"HTTP/1.1 20 OK", b"HTTP/1.1 200 O\x00K", b"http/1.1 200 OK",
                                  b"HTTP/1.1 200 " + b"r" * 80, b"HTTP/1.1  200 OK"])
def test_a_status_line_read_twice_reads_the_same(line):
    head = line + b"\r\nContent-Length: 0\r\n\r\n"
    first = parse_both_ways(head, http11.ResponseParser)
    second = parse_both_ways(head, http11.ResponseParser)
    assert second == first
    if isinstance(first[0], http11.ParseError):
        assert line not in http11._STATUS_LINES and first[0].status == 502
    else:
        assert (line in http11._STATUS_LINES) == (len(line) <= 64)


def test_the_status_lines_are_bounded():
    for i in range(http11._STATUS_LINES_MAX * 2 + 3):
        http11.ResponseParser().feed(b"HTTP/1.1 200 R%d\r\nContent-Length: 0\r\n\r\n" % i)
    assert 0 < len(http11._STATUS_LINES) <= http11._STATUS_LINES_MAX


def test_lower_names_are_bytes_lower():
    rng = random.Random(7)
    names = [bytes(rng.choice(b"aZ-_09xX") for _ in range(rng.randint(1, 10)))
             for _ in range(500)]
    for name in names:
        http11._parse_fields(name + b": v\r\n")           # remembered (a token)
        assert http11._lower(name) == name.lower()
    assert http11._lower(b"Never-Seen-Before-Q") == b"never-seen-before-q"
    assert all(low == name.lower() for name, low in http11._LOWER.items())
    assert len(http11._LOWER) <= http11._GOOD_NAMES_MAX


def test_the_connection_compiled_or_not_serves_python_subclasses():
    # WebSession and the HTTP/2 streams subclass HttpConnection in Python (compiled:
    # allow_interpreted_subclasses); its own code calls the module functions directly,
    # a subclass still has the methods.
    import asyncio
    from carbotui.proxy import httpconn

    class Stream(httpconn.HttpConnection):
        def __init__(self):
            super().__init__(http11.RequestParser())
            self.out = []

        def write(self, data):
            self.out.append(data)

    async def main():
        conn = Stream()
        loop = asyncio.get_running_loop()
        waiter = conn._waiter = loop.create_future()
        conn._wake()                                     # the method, as h2conn calls it
        assert waiter.done()
        conn._waiter = None
        conn.write(b"x")
        with pytest.raises(asyncio.TimeoutError):
            await conn._wait(0)
        with pytest.raises(asyncio.TimeoutError):
            await conn.next_event(0.001)                 # nothing came
        loop.call_soon(conn.data_received, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        first = await conn.next_event(5)
        assert isinstance(first, http11.Request) and conn._waiter is None
        assert conn.next_ready(http11.EndOfMessage) == http11.EndOfMessage([])
        return conn.out
    assert asyncio.run(main()) == [b"x"]


@pytest.mark.parametrize("method", sorted(http11._METHODS) + [b"G(T", b"", b"GET ", b"get",
                                                             "GET"])
def test_request_heads_with_known_and_odd_methods(method):
    ok = bool(re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+",
                           method.encode("latin-1") if isinstance(method, str) else bytes(method)))
    assert ok == (method not in (b"G(T", b"", b"GET "))
    if not ok:
        with pytest.raises(ValueError):
            http11.serialize_request_head(method, b"/", [(b"Host", b"h")])
        return
    head = http11.serialize_request_head(method, b"/", [(b"Host", b"h"), (b"X-A", "v")])
    name = method.encode() if isinstance(method, str) else bytes(method)
    assert head == name + b" / HTTP/1.1\r\nHost: h\r\nX-A: v\r\n\r\n"
    assert http11._b(b"x") == b"x" and http11._b(bytearray(b"x")) == b"x" and \
        type(http11._b(bytearray(b"x"))) is bytes and http11._b("\xe9") == b"\xe9"


@pytest.mark.parametrize("line", [b"GET /health HTTP/1.1", b"POST /service/soap/NoOpRequest HTTP/1.1",
                                  b"GET /x?zauthtoken=secret HTTP/1.1", b"GET / HTTP/1.0",
                                  b"GET / HTTP/2.0", b"GET  / HTTP/1.1", b"G(T / HTTP/1.1",
                                  b"GET /\x7f HTTP/1.1", b"GET / http/1.1", b"GET /" + b"a" * 80
                                  + b" HTTP/1.1", b"M-SEARCH * HTTP/1.1", b"GET / HTTP/1.1 "])
def test_a_request_line_read_twice_reads_the_same(line):
    head = line + b"\r\nHost: h\r\n\r\n"
    first = parse_both_ways(head)
    assert parse_both_ways(head) == first
    remembered = line in http11._REQUEST_LINES
    if isinstance(first[0], http11.ParseError):
        assert not remembered and first[0].status in (400, 505)
    else:
        assert remembered == (len(line) <= http11._SHORT and b"?" not in line)
        assert first[0].method + b" " + first[0].target + b" HTTP/" + first[0].version == line


def test_the_request_lines_are_bounded():
    for i in range(http11._REQUEST_LINES_MAX * 2 + 3):
        http11.RequestParser().feed(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
    assert 0 < len(http11._REQUEST_LINES) <= http11._REQUEST_LINES_MAX
