"""What the relay must know of a logged-in IMAP session, sans-IO: bytes in, facts out.

After login the proxy adds nothing and drops nothing between client and mailbox server.
The one exception: the mailbox server goes away mid-session, without having said
``* BYE`` and without the client having asked for LOGOUT; then the client gets one
``* BYE [UNAVAILABLE]`` line, as a mailbox server would send before closing (RFC 9051
section 7.1.5). Whether that is the case is decided from protocol state, not from a window
of recent bytes:

- each direction is framed into lines and literals (RFC 9051 section 4.3: a line that ends
  in ``{n}``, ``{n+}`` or, for BINARY, ``~{n}`` is followed by n raw bytes, then the line
  goes on), so a ``* BYE`` or ``a LOGOUT`` inside a message body is never taken for one;
- the server's side looks at the start of each line for an untagged ``BYE``
  (``* BYE``, any case): once seen, the server has said goodbye;
- the client's side looks at the start of each command line for ``LOGOUT`` (RFC 9051
  section 6.1.3: nothing may follow its tagged OK) and for ``COMPRESS`` (RFC 4978: from
  its OK on, both directions are deflated and no plaintext line can be added);
- a farewell is only ever added at a line boundary of the server's stream: between two
  responses, never inside a line or a literal.

Cost: one ``bytes.find`` per line and none per byte of a literal (a literal's bytes are
skipped by arithmetic), and no copy of a chunk: only the first and last bytes of a line
that spans chunks are kept. A command line costs a regex call only when its name starts
like LOGOUT or COMPRESS, and after the client's LOGOUT or COMPRESS the server's stream is
no longer looked at.
"""
from __future__ import annotations

import re
from typing import Final

from mypy_extensions import mypyc_attr

__all__ = ["ImapStream"]

# The end of a line that announces a literal: {n}, {n+} (RFC 7888) or ~{n} (RFC 3516).
_LITERAL_END: Final = re.compile(rb"\{(\d{1,20})\+?\}\r?\n\Z")
# The start of a client command line whose command matters here: tag SP name.
_COMMAND: Final = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\]+ (LOGOUT|COMPRESS)(?:[ \r\n]|\Z)",
                      re.IGNORECASE)

# An untagged BYE, wherever it is in a chunk of whole lines (at a line's start: checked
# after; a pattern that starts with the check, \A or a lookbehind, is tried at every byte).
_BYE: Final = re.compile(rb"\* BYE[ \r\n]", re.IGNORECASE)

TAIL: Final = 32           # bytes of a line's end kept (enough for "{" 20 digits "+}\r\n")


# Compiled by mypyc (setup.py); tests/unit/test_imapstream.py subclasses the framers in
# Python (the line loop alone, without the fast paths), which a native class allows only so.
@mypyc_attr(allow_interpreted_subclasses=True)
class _Framer:
    """One direction, cut into lines and literals; ``_line`` sees each line's start
    (its first ``HEAD`` bytes) unless the line goes on after a literal."""

    __slots__ = ("_literal", "_head", "_tail", "_partial", "_continues")
    HEAD = 8

    def __init__(self) -> None:
        self._literal = 0          # bytes of the current literal still to come
        self._head = b""           # start of the line being received (when it spans reads)
        self._tail = b""           # end of it
        self._partial = False      # some bytes of a line received, its LF not yet
        self._continues = False    # the line being received follows a literal

    @property
    def at_boundary(self) -> bool:
        """Between two lines: no line, literal or line after a literal half received."""
        return not (self._partial or self._literal or self._continues)

    def feed(self, data: bytes) -> None:
        pos = self._literal
        size = len(data)
        if pos >= size:                     # all literal (the bulk of a big FETCH)
            self._literal = pos - size
            return
        self._literal = 0
        find = data.find
        while True:
            nl = find(b"\n", pos)
            if nl < 0:
                if pos < size:
                    self._keep(data, pos, size)
                return
            if self._partial:
                head = (self._head + data[pos:pos + self.HEAD])[:self.HEAD]
                tail = (self._tail + data[max(pos, nl + 1 - TAIL):nl + 1])[-TAIL:]
                self._partial = False
                self._head = self._tail = b""
                marker = _LITERAL_END.search(tail)
            else:
                head = data[pos:pos + self.HEAD]
                # Only a line whose last character before CRLF is "}" can announce one.
                end = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
                marker = (_LITERAL_END.search(data, max(pos, end - TAIL), nl + 1)
                          if end > pos and data[end - 1] == 125 else None)
            if not self._continues:
                self._line(head)
            pos = nl + 1
            if marker is None:
                self._continues = False
                continue
            self._continues = True          # the command/response goes on after it
            pos += int(marker.group(1))
            if pos >= size:
                self._literal = pos - size
                return

    def _keep(self, data: bytes, pos: int, size: int) -> None:
        """A line that goes on in the next read: keep its start and its end."""
        if self._partial:
            if len(self._head) < self.HEAD:
                self._head = (self._head + data[pos:pos + self.HEAD])[:self.HEAD]
            self._tail = (self._tail + data[max(pos, size - TAIL):])[-TAIL:]
        else:
            self._partial = True
            self._head = data[pos:pos + self.HEAD]
            self._tail = data[max(pos, size - TAIL):]

    def _line(self, head: bytes) -> None:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class _ServerSide(_Framer):
    __slots__ = ("bye",)

    def __init__(self) -> None:
        _Framer.__init__(self)
        self.bye = False

    def feed(self, data: bytes) -> None:
        # The usual chunk: whole lines, none announcing a literal (no "}"), received
        # between two lines. Then _Framer.feed would end between two lines too and only
        # a BYE at a line's start matters: one regex over the chunk instead of a loop.
        # (data.find, not `in`: CPython's `bytes in bytes` first tries the operand as an
        # int and formats the TypeError it gets, twice the cost of the search.)
        if (data[-1:] == b"\n" and not (self._partial or self._literal or self._continues)
                and data.find(b"}") < 0):
            if not self.bye:
                m = _BYE.search(data)
                while m is not None:
                    at = m.start()
                    if at == 0 or data[at - 1] == 10:
                        self.bye = True
                        break
                    m = _BYE.search(data, at + 1)
            return
        _Framer.feed(self, data)

    def _line(self, head: bytes) -> None:
        if head[:5].upper() == b"* BYE" and head[5:6] in (b" ", b"\r", b"\n", b""):
            self.bye = True


@mypyc_attr(allow_interpreted_subclasses=True)
class _ClientSide(_Framer):
    __slots__ = ("logout", "compress")
    HEAD = 256         # a tag may be long; "tag LOGOUT" must fit

    def __init__(self) -> None:
        _Framer.__init__(self)
        self.logout = self.compress = False

    def feed(self, data: bytes) -> None:
        # The usual chunk: one whole command line, no literal, no longer than HEAD,
        # received between two lines: it is its own head.
        if (data[-1:] == b"\n" and len(data) <= self.HEAD
                and not (self._partial or self._literal or self._continues)
                and _one_line_without_brace(data)):
            self._line(data)
            return
        _Framer.feed(self, data)

    def _line(self, head: bytes) -> None:
        # _COMMAND asks for a tag (no space in it), one space, then LOGOUT or COMPRESS: so
        # the two bytes after the first space must be "lo" or "co" in any case, with room
        # for six letters, or it cannot match. Checked by index first (compiled; tags are
        # short): most commands (SELECT, FETCH, UID, IDLE...) then cost no regex call.
        size = len(head)
        i = 0
        while i < size and head[i] != 32:
            i += 1
        if i + 7 > size or head[i + 2] | 32 != 111:             # "o"
            return
        c = head[i + 1] | 32
        if c != 108 and c != 99:                                # "l", "c"
            return
        # The regex judges the whole line; the letter after the tag says which command.
        if _COMMAND.match(head) is not None:
            if c == 108:
                self.logout = True
            else:
                self.compress = True

    @property
    def final(self) -> bool:
        """The client has sent LOGOUT or COMPRESS (neither flag is ever cleared): from
        here on the proxy may add no line of its own."""
        return self.logout or self.compress


def _one_line_without_brace(data: bytes) -> bool:
    """For a chunk that ends in LF: data.find(b"\\n") == len(data) - 1 and data.find(b"}") < 0,
    byte by byte: compiled, cheaper for a command-sized chunk than two method calls."""
    for i in range(len(data) - 1):
        c = data[i]
        if c == 10 or c == 125:
            return False
    return True


class ImapStream:
    """Both directions of one relayed IMAP session."""

    __slots__ = ("server", "client")

    def __init__(self) -> None:
        self.server = _ServerSide()
        self.client = _ClientSide()

    def from_server(self, data: bytes) -> None:
        # Once the client is final, may_add_line is False for good: the server's stream
        # need not be framed any more (after COMPRESS it is deflated anyway), so the
        # LOGOUT reply costs no BYE search.
        if not self.client.final:
            self.server.feed(data)

    def from_client(self, data: bytes) -> None:
        self.client.feed(data)

    def may_add_line(self) -> bool:
        """Whether the proxy may still write a line of its own to the client: the server
        has not said BYE, the client has not asked for LOGOUT or COMPRESS, and the
        server's stream stands between two lines."""
        return not self.server.bye and not self.client.final and self.server.at_boundary
