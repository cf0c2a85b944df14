"""The relay's view of a logged-in IMAP session (carbotui/protocols/imapstream.py): may the proxy
still add a line of its own? Each transcript is fed whole, byte by byte, and split at
every position, and must give the same answer each way."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from carbotui.protocols.imapstream import ImapStream

BYE_OK = (b"* BYE Logging out\r\n"
          b"a1 OK Logout completed (0.001 + 0.000 + 0.000 secs).\r\n")


def _feeds(client: bytes, server: bytes):
    """Every way to cut the two streams: whole, byte by byte, and at each position."""
    yield [client], [server]
    yield [client[i:i + 1] for i in range(len(client))], [server[i:i + 1]
                                                         for i in range(len(server))]
    for i in range(len(server) + 1):
        yield [client], [server[:i], server[i:]]
    for i in range(len(client) + 1):
        yield [client[:i], client[i:]], [server]


def _verdicts(client: bytes, server: bytes) -> set[bool]:
    out = set()
    for cparts, sparts in _feeds(client, server):
        s = ImapStream()
        for part in cparts:
            s.from_client(part)
        for part in sparts:
            s.from_server(part)
        out.add(s.may_add_line())
    return out


def may_add(client: bytes, server: bytes) -> bool:
    verdicts = _verdicts(client, server)
    assert len(verdicts) == 1, f"the answer depends on how the bytes were cut: {verdicts}"
    return verdicts.pop()


def test_nothing_after_the_logout_reply_whatever_the_read_size():
    # The outside tester's case: BYE and tagged OK in one read longer than 64 bytes.
    assert len(BYE_OK) > 64
    assert not may_add(b"a1 LOGOUT\r\n", BYE_OK)


def test_server_bye_alone_is_enough():
    assert not may_add(b"", b"* OK [CAPABILITY IMAP4rev1] ready\r\n* BYE Autologout\r\n")
    assert not may_add(b"", b"* bye shutting down\r\n")


def test_client_logout_alone_is_enough():
    # A server that closes without a BYE after LOGOUT: still nothing added.
    assert not may_add(b"x LOGOUT\r\n", b"")
    assert not may_add(b"x logout\r\n", b"")
    long_tag = b"T" * 200
    assert not may_add(long_tag + b" LOGOUT\r\n", b"")


def test_server_lost_mid_session_gets_one_bye():
    assert may_add(b"a SELECT INBOX\r\n",
                   b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\na OK [READ-WRITE] done\r\n")
    assert may_add(b"", b"")


def test_bye_or_logout_inside_a_literal_is_data():
    body = b"\r\n* BYE not a response\r\nz LOGOUT\r\n"
    server = b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\nb OK Fetch completed.\r\n" % (len(body), body)
    client = b"c APPEND INBOX {%d+}\r\n%s\r\nb FETCH 1 BODY[]\r\n" % (len(body), body)
    assert may_add(client, server)
    # synchronising and BINARY literals frame the same way
    assert may_add(b"c APPEND INBOX {%d}\r\n%s\r\n" % (len(body), body),
                   b"* 1 FETCH (BINARY[] ~{%d}\r\n%s)\r\n" % (len(body), body))


def test_the_line_after_a_literal_continues_the_command():
    # " LOGOUT" after an APPEND literal is the rest of the APPEND line, not a command.
    assert may_add(b"c APPEND INBOX {3}\r\nabc LOGOUT\r\n", b"")


def test_no_line_added_inside_a_response_or_a_literal():
    assert not may_add(b"", b"* 1 FETCH (FLAGS (\\Seen")                # mid-line
    assert not may_add(b"", b"* 1 FETCH (BODY[] {10}\r\n12345")           # mid-literal
    assert not may_add(b"", b"* 1 FETCH (BODY[] {5}\r\n12345")            # line goes on
    assert may_add(b"", b"* 1 FETCH (BODY[] {5}\r\n12345)\r\n")


def test_compress_makes_the_session_opaque():
    assert not may_add(b"a COMPRESS DEFLATE\r\n", b"a OK DEFLATE active\r\n")


def test_a_literal_that_ends_the_read_exactly():
    s = ImapStream()
    s.from_server(b"* 1 FETCH (BODY[] {4}\r\n")
    s.from_server(b"abcd")
    s.from_server(b")\r\n* BYE going\r\n")
    assert s.server.bye


def test_huge_literal_costs_no_per_byte_work():
    s = ImapStream()
    s.from_server(b"* 1 FETCH (BODY[] {20000000}\r\n")
    chunk = b"* BYE \r\n" * 8192
    for _ in range(20000000 // len(chunk)):
        s.from_server(chunk)
    s.from_server(chunk[:20000000 % len(chunk)])
    assert not s.server.bye and s.server.at_boundary is False
    s.from_server(b")\r\n")
    assert s.may_add_line()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([
    b"* 1 EXISTS\r\n", b"a OK done\r\n", b"* 2 FETCH (BODY[] {7}\r\n* BYE\r\n)\r\n",
    b"* OK still here\r\n", b"* 3 FETCH (FLAGS ())\r\n"]), max_size=8),
    st.integers(min_value=0, max_value=300))
def test_any_split_of_responses_without_bye_lets_a_bye_be_added(parts, cut):
    server = b"".join(parts)
    cut = min(cut, len(server))
    s = ImapStream()
    s.from_server(server[:cut])
    s.from_server(server[cut:])
    assert s.may_add_line()
    s.from_server(b"* BYE bye\r\n")
    assert not s.may_add_line()


@pytest.mark.parametrize("line", [b"* BYEBYE\r\n", b"** BYE\r\n", b"a BYE\r\n"])
def test_only_an_untagged_bye_counts(line):
    assert may_add(b"", line)


# -- the whole-lines fast paths of _ServerSide.feed and _ClientSide.feed ------------------
from carbotui.protocols import imapstream  # noqa: E402


class _SlowServer(imapstream._ServerSide):
    __slots__ = ()
    feed = imapstream._Framer.feed


class _SlowClient(imapstream._ClientSide):
    __slots__ = ()
    feed = imapstream._Framer.feed


_LINES = [b"* BYE\r\n", b"* bye now\r\n", b"* BYEBYE\r\n", b"** BYE\r\n", b"* BYE\n",
          b"a BYE\r\n", b"x * BYE\r\n", b"* OK [UIDVALIDITY 1] ok\r\n", b"* 1 EXISTS\r\n",
          b"a1 LOGOUT\r\n", b"a1 logout\n", b"a1 LOGOUTX\r\n", b"a1 COMPRESS DEFLATE\r\n",
          b"(a LOGOUT\r\n", b"a1 SELECT INBOX\r\n", b"a LOGOUT {3}\r\nabc\r\n",
          b"* 2 FETCH (BODY[] {9}\r\n* BYE\r\n\r\n)\r\n", b"a APPEND x {11+}\r\na LOGOUT\r\n\r\n",
          b"t" * 249 + b" LOGOUT\r\n", b"t" * 250 + b" LOGOUT\r\n", b"\r\n", b"\n",
          b"a2 NOOP\r\n", b"* OK }\r\n", b"partial line without end"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_LINES), max_size=10),
       st.lists(st.integers(min_value=0, max_value=600), max_size=4))
def test_fast_paths_judge_as_the_line_loop(lines, cuts):
    stream = b"".join(lines)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    parts = [stream[a:b] for a, b in zip(points, points[1:])] or [b""]
    fast_s, slow_s = imapstream._ServerSide(), _SlowServer()
    fast_c, slow_c = imapstream._ClientSide(), _SlowClient()
    for part in parts:
        for fast, slow in ((fast_s, slow_s), (fast_c, slow_c)):
            fast.feed(part)
            slow.feed(part)
            assert fast.at_boundary == slow.at_boundary
    assert fast_s.bye == slow_s.bye
    assert (fast_c.logout, fast_c.compress) == (slow_c.logout, slow_c.compress)


def test_fast_paths_are_taken_for_whole_lines():
    # a chunk of whole lines costs one regex, not the line loop (which would call _line)
    class Counting(imapstream._ServerSide):
        __slots__ = ("lines",)

        def _line(self, head):
            self.lines = getattr(self, "lines", 0) + 1
            super()._line(head)
    s = Counting()
    s.feed(b"* 3 EXISTS\r\n* 0 RECENT\r\n* BYE over\r\na1 OK done\r\n")
    assert s.bye and s.at_boundary and getattr(s, "lines", 0) == 0


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"}", b"{", b"\n", b"\r", b" ", b"\x00", b"\xff"]),
                max_size=40))
def test_one_line_without_brace_is_the_two_finds(pieces):
    data = b"".join(pieces) + b"\n"              # the fast path asks only of a chunk ending in LF
    assert imapstream._one_line_without_brace(data) == (
        data.find(b"\n") == len(data) - 1 and data.find(b"}") < 0)


# -- what is no longer looked at ------------------------------------------------------------
_HEAD_BYTES = [b"a", b"A1", b" ", b"  ", b"\t", b"\x00", b"\xff", b"(", b"*", b"+", b"\r\n",
               b"\n", b"L", b"l", b"O", b"o", b"GOUT", b"gout", b"C", b"c", b"MPRESS",
               b"mpress", b"LOGOUT", b"logout", b"COMPRESS", b"cOmPrEsS", b"LOGIN", b"COPY",
               b"SELECT", b"LIST", b"CAPABILITY", b"}", b"{3}"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_HEAD_BYTES), max_size=8))
def test_a_command_line_is_judged_as_the_regex_judges_it(pieces):
    # _ClientSide._line checks the bytes after the tag before it calls the regex: it must
    # set the flags exactly where the regex alone would.
    head = b"".join(pieces)
    side = imapstream._ClientSide()
    side._line(head)
    m = imapstream._COMMAND.match(head)
    name = m.group(1).upper() if m else b""
    assert (side.logout, side.compress) == (name == b"LOGOUT", name == b"COMPRESS")


@pytest.mark.parametrize("command", [b"a LOGOUT\r\n", b"a COMPRESS DEFLATE\r\n"])
def test_after_logout_or_compress_the_server_stream_is_not_framed(command):
    s = ImapStream()
    s.from_client(command)
    # a literal announced after it would leave the framer mid-literal, if it were fed
    s.from_server(b"* 1 FETCH (BODY[] {10}\r\n12345")
    assert s.server.at_boundary and not s.server.bye
    assert not s.may_add_line()
