"""The C-level checks of carbotui.protocols.http11 (header blocks, long request lines,
serialised heads) judge exactly as the per-line regular expressions they stand in for:
every input below is parsed whole and byte by byte and compared with the rule written
out as the regex, and a hostile value is never serialised."""
from __future__ import annotations

import random
import re

import pytest

from carbotui.protocols import http11
from tests.support.transcripts import merged
from carbotui.protocols.http11 import (
    ParseError, Request, RequestParser, ResponseParser, serialize_request_head,
    serialize_response_head,
)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_LINE = re.compile(rb"(" + _TOKEN + rb"):([^\x00-\x08\x0a-\x1f\x7f]*)")
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/(1\.[01])")


def reference_fields(block: bytes):
    """The rule, one regex per line (what the parser did before its fast path)."""
    if not block:
        return []
    out = []
    for line in block[:-2].split(b"\r\n"):
        m = _LINE.fullmatch(line)
        if m is None:
            return None
        out.append((m.group(1), m.group(2).strip(b" \t")))
    return out


def events(data: bytes, step: int | None = None, cls=RequestParser):
    p = cls()
    if step is None:
        return merged(p.feed(data))
    out = []
    for i in range(0, len(data), step):
        out += p.feed(data[i:i + step])
    return merged(out)


def parse_both_ways(data: bytes, cls=RequestParser):
    whole = events(data, cls=cls)
    assert events(data, 1, cls) == whole        # byte by byte: the same events
    assert events(data, 7, cls) == whole
    return whole


LINES = [
    b"Accept: a", b"X-A:b", b"X-A:   spaced   ", b"X-A:\ttab\t", b"X-A:", b"X-A: \x80\xff",
    b"X-A: a\x00b", b"X-A: a\rb", b"X-A: a\x7f", b"X-A: a\x1bb", b"X A: b", b"X-A : b",
    b" X-A: b", b"\tX-A: b", b"X-A b", b": b", b"X(A): b", b"X-A: b: c", b"\x80: b",
    b"X-A: " + b"v" * 300, b"Cookie: a=1; b=2", b"X-" + b"n" * 100 + b": long name",
]


@pytest.mark.parametrize("line", LINES)
def test_a_header_line_is_judged_as_the_regex_judges_it(line):
    block = b"Host: h\r\n" + line + b"\r\nX-B: 1\r\n"
    expected = reference_fields(block)
    got, problem = http11._parse_fields(block)
    if expected is None:
        assert problem and got == []
    else:
        assert problem is None and got == expected
    # and in a whole request, fed whole and byte by byte
    result = parse_both_ways(b"GET / HTTP/1.1\r\n" + block + b"\r\n")
    if expected is None:
        assert isinstance(result[-1], ParseError) and result[-1].status == 400
    else:
        assert isinstance(result[0], Request) and result[0].headers == expected


def test_random_header_blocks_agree_with_the_regex():
    rng = random.Random(1605)
    alphabet = b"aZ09-_:; \t\r\n\x00\x7f\x80\xff\"(),=x"
    for _ in range(3000):
        lines = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                 for _ in range(rng.randint(1, 4))]
        block = b"".join(line + b"\r\n" for line in lines)
        expected = reference_fields(block)
        got, problem = http11._parse_fields(block)
        assert (got if problem is None else None) == expected, block


@pytest.mark.parametrize("target", [
    b"/", b"/health", b"/" + b"a" * 200, b"/x?" + b"q=1&" * 50 + b"\x80\xff",
    b"/" + b"a" * 100 + b"\x00", b"/" + b"a" * 100 + b"\x7f", b"/" + b"a" * 100 + b"\x1f",
    b"/" + b"a" * 100 + b" x",
])
@pytest.mark.parametrize("method", [b"GET", b"M-SEARCH", b"G(T", b""])
@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"http/1.1",
                                     b"HTTP/11", b"HTTP/1.1 "])
def test_request_lines_short_and_long_as_the_regex(method, target, version):
    line = method + b" " + target + b" " + version
    result = parse_both_ways(line + b"\r\nHost: h\r\n\r\n")
    m = _REQUEST_LINE.fullmatch(line)
    if m is not None:
        assert isinstance(result[0], Request)
        assert (result[0].method, result[0].target, result[0].version) == m.groups()
    else:
        assert isinstance(result[-1], ParseError) and result[-1].status in (400, 505)


def test_response_fields_whole_and_byte_by_byte():
    head = (b"HTTP/1.1 200 OK\r\nServer: s\r\nX-Long: " + b"v" * 500 + b"\r\n"
            b"Content-Length: 2\r\n\r\nok")
    result = parse_both_ways(head, ResponseParser)
    assert result[0].headers[1] == (b"X-Long", b"v" * 500)
    bad = head.replace(b"X-Long: v", b"X-Long: \x00v")
    assert parse_both_ways(bad, ResponseParser)[-1].status == 502


@pytest.mark.parametrize("value", [b"a\r\nInjected: 1", b"a\nb", b"a\rb", b"a\x00", b"\x7f",
                                   b"x" * 500 + b"\r\n\r\nGET / HTTP/1.1"])
def test_a_value_that_could_forge_a_header_is_never_serialised(value):
    with pytest.raises(ValueError, match="refusing to serialise header"):
        serialize_response_head(200, None, [(b"X-Ok", b"1"), (b"X-Bad", value)])
    with pytest.raises(ValueError, match="refusing to serialise header"):
        serialize_request_head(b"GET", b"/", [(b"Host", b"h"), (b"X-Bad", value)])


@pytest.mark.parametrize("name", [b"X Bad", b"X:Bad", b"", b"X\r\nY", "Nämé"])
def test_a_name_that_is_no_token_is_never_serialised(name):
    with pytest.raises(ValueError, match="refusing to serialise header"):
        serialize_response_head(200, None, [(name, b"1")])


@pytest.mark.parametrize("target", [b"/" + b"a" * 100 + b"\x00", b"/" + b"a" * 100 + b" x",
                                    b"/a b", b"", b"/a\r\n"])
def test_a_target_with_a_space_or_control_is_never_serialised(target):
    with pytest.raises(ValueError, match="request line"):
        serialize_request_head(b"GET", target, [])


def test_serialised_heads_are_what_the_parser_reads_back():
    headers = [(b"Host", b"h"), (b"X-Tab", b"a\tb"), (b"X-High", b"\x80\xff"), ("X-Str", "v")]
    head = serialize_request_head(b"GET", b"/" + b"p" * 100, headers)
    req = parse_both_ways(head)[0]
    assert req.headers == [(b"Host", b"h"), (b"X-Tab", b"a\tb"), (b"X-High", b"\x80\xff"),
                           (b"X-Str", b"v")]
    resp = serialize_response_head(200, None, [(b"Content-Length", b"0")],
                                   checked=b"X-Frame-Options: sameorigin\r\n")
    assert resp == (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                    b"X-Frame-Options: sameorigin\r\n\r\n")


def test_the_checked_names_cache_is_bounded():
    for i in range(http11._GOOD_NAMES_MAX + 100):
        http11._parse_fields(b"X-%d: v\r\n" % i)
    http11._parse_fields(b"X-" + b"n" * 5000 + b": v\r\n")
    assert len(http11._GOOD_NAMES) <= http11._GOOD_NAMES_MAX
    assert all(len(name) <= 64 for name in http11._GOOD_NAMES)
