"""Pop3Quit (carbotui/proxy/mail.py), the relayed POP3 session's watch: its by-index test of
the last line is the same judgement as the plain bytes-method expression it replaces, on
odd input too (case, whitespace of every kind, several lines, CR/LF runs, 255/256 bytes)."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from carbotui.proxy.mail import Pop3Quit


def reference(data: bytes, before: bool) -> bool:
    if len(data) < 256:
        return data.rstrip(b"\r\n").rpartition(b"\n")[2].strip().upper() == b"QUIT"
    return before


def judged(data: bytes, before: bool) -> bool:
    watch = Pop3Quit()
    watch.quit = before
    watch.from_client(data)
    return watch.quit


_PIECES = [b"QUIT", b"quit", b"QuIt", b"QUI", b"UIT", b"QUITS", b"STAT", b"q", b"Q", b"T",
           b" ", b"\t", b"\x0b", b"\x0c", b"\r", b"\n", b"\r\n", b"\x00", b"\xd1", b"\xf1",
           b"x", b"LIST 1", b"RETR 2"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12), st.booleans())
def test_by_index_judges_as_the_bytes_methods(pieces, before):
    data = b"".join(pieces)
    assert judged(data, before) == reference(data, before)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_judged_the_same(data, before):
    assert judged(data, before) == reference(data, before)


def test_examples():
    for data, quit in [(b"QUIT\r\n", True), (b"quit\n", True), (b" QuIt \t\r\n", True),
                       (b"STAT\r\nQUIT\r\n", True), (b"QUIT\r\nSTAT\r\n", False),
                       (b"QUIT\r\n\r\n\r\n", True), (b"QUITE\r\n", False), (b"", False),
                       (b"\r\n", False), (b"Q UIT\r\n", False), (b"\xd1UIT\r\n", False),
                       (b"NOOP\r\n" * 42 + b"QUIT\r\n", True)]:     # 258 bytes: unchanged
        assert len(data) >= 256 or judged(data, False) is quit
    assert judged(b"NOOP\r\n" * 42 + b"QUIT\r\n", False) is False
    assert judged(b"x" * 255, True) is False and judged(b"x" * 256, True) is True
