"""Pieces the IMAP and POP3 machines share (pure functions and one buffer).

- SASL PLAIN: decode what a client sent, encode what we send upstream.
- Strict base64 (RFC 4648 alphabet, padding required, no whitespace).
- Credential text checks, so both protocols accept and refuse the same names.
- ``LineBuffer``: an O(n) CRLF line + fixed-length-read buffer (h11 style).
- ``coalesce``: merge adjacent ``Send`` events into one write.

Nothing here does I/O. No exception message ever contains a password.
"""
from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final, Union

from carbotui.protocols.events import (
    Authenticate, BackendFailed, ClientId, Close, LoginOK, LoginRejected, Send, StartTLS,
)

# Everything a machine may return from feed() and friends.
Event = Union[Send, StartTLS, Authenticate, ClientId, Close, LoginOK, LoginRejected, BackendFailed]


class AuthDataError(ValueError):
    """The client's authentication data is unusable. ``str()`` is a short
    English reason that is safe to send to the client and to log: it never
    quotes the data itself."""


class AuthzidRefused(AuthDataError):
    """SASL PLAIN asked to act as another user (an authorization identity that is
    not the authentication identity). The proxy supports no delegation, so the
    exchange fails (RFC 4616 §2) with the protocol's authorization-failure code."""


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    authzid: str                      # always "": absent or equal to the username
    username: str
    password: str = field(repr=False)


# C0 controls, DEL and C1 controls. C1 matters because U+009B is an 8-bit CSI
# that some terminals honour when a name reaches a log viewer.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
# A password may hold any character except those no protocol can carry
# (NUL is the SASL PLAIN separator; CR/LF end a POP3 PASS line).
_PASSWORD_FORBIDDEN: Final = re.compile("[\x00\r\n]")


def b64decode_strict(data: bytes) -> bytes:
    """Decode base64 the way RFC 3501/5034 want it: alphabet only, '=' only at
    the end, correct padding."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise AuthDataError("Invalid base64 data") from None


def decode_username(raw: bytes, what: str = "Username") -> str:
    """Bytes from the wire to a username: UTF-8, not empty, no control, format
    or line/paragraph separator characters (Unicode categories Cc, Cf, Zl, Zp:
    U+2028 would end a line for some log readers, U+202E reverses the text on
    screen, U+200B hides in it). Nothing is stripped here: the glue keys the
    throttle on the canonical form (audit.canonical_login)."""
    if not raw:
        raise AuthDataError(f"Empty {what.lower()}")
    if raw.translate(_PRINTABLE_ASCII) == raw:
        # Printable ASCII (the usual name): valid UTF-8, no control nor invisible
        # character; one compiled table pass instead of the regex and isascii calls.
        return raw.decode("ascii")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthDataError(f"{what} is not valid UTF-8") from None
    if _CONTROL.search(name) or (not name.isascii() and _has_invisible(name)):
        raise AuthDataError(f"{what} contains control characters")
    return name


_INVISIBLE: Final = frozenset(("Cc", "Cf", "Zl", "Zp"))
# bytes.translate tables (compiled by mypyc; the value itself comes back when nothing
# changed): these keep the bytes a check lets through and change every other one.
_PRINTABLE_ASCII: Final = bytes(c if 0x20 <= c <= 0x7e else c ^ 1 for c in range(256))
_NOT_NUL_CR_LF: Final = bytes(c ^ 1 if c in (0, 13, 10) else c for c in range(256))


def _has_invisible(name: str) -> bool:
    """Any character of a category no name needs (only asked for non-ASCII names,
    which are rare: the usual login costs the one regex scan above)."""
    category = unicodedata.category
    return any(category(c) in _INVISIBLE for c in name if c > "\x7f")


def decode_password(raw: bytes) -> str:
    """Bytes from the wire to a password: UTF-8 without NUL, CR or LF (so it
    can be relayed by IMAP LOGIN, SASL PLAIN and POP3 PASS alike)."""
    try:
        password = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthDataError("Password is not valid UTF-8") from None
    if raw.translate(_NOT_NUL_CR_LF) != raw and _PASSWORD_FORBIDDEN.search(password):
        raise AuthDataError("Password contains NUL, CR or LF")
    return password


def decode_plain(message: bytes) -> PlainCredentials:
    """Decode a SASL PLAIN message (RFC 4616): ``authzid NUL authcid NUL passwd``
    (already base64-decoded)."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise AuthDataError("Invalid SASL PLAIN message")
    raw_authzid, raw_user, raw_password = parts
    username = decode_username(raw_user)
    authzid = decode_username(raw_authzid, "Authorization identity") if raw_authzid else ""
    password = decode_password(raw_password)
    # Several clients repeat the username as authzid; that is no delegation,
    # and normalising it saves the glue a special case. Any other authzid is a
    # request to act as someone else: refused, never turned into a login as oneself.
    if authzid and authzid != username:
        raise AuthzidRefused("Authorization as another user is not allowed")
    return PlainCredentials("", username, password)


def encode_plain(username: str, password: str, authzid: str = "") -> bytes:
    """The base64 SASL PLAIN response for the given credentials."""
    message = b"%s\0%s\0%s" % (authzid.encode("utf-8"), username.encode("utf-8"),
                                password.encode("utf-8"))
    return base64.b64encode(message)


def check_wire_safe(username: str, password: str) -> None:
    """Refuse credentials that would let a value break out of a command line
    upstream (CR/LF injection) or that no mechanism can carry (NUL)."""
    # `in` on str is compiled (PyUnicode_Contains); the regex search is a method call.
    if "\0" in username or "\r" in username or "\n" in username:
        raise ValueError("username contains NUL, CR or LF")
    if "\0" in password or "\r" in password or "\n" in password:
        raise ValueError("password contains NUL, CR or LF")


def safe_text(text: str, limit: int = 200) -> str:
    """One line of human text for a protocol reply or a log: control
    characters become spaces, and it is cut to ``limit`` characters."""
    return _CONTROL.sub(" ", text)[:limit]


def coalesce(events: list[Event]) -> list[Event]:
    """Merge runs of adjacent Send events, so the glue does one write per run."""
    if len(events) < 2:
        return events
    after_send = False
    for event in events:
        is_send = type(event) is Send
        if is_send and after_send:
            break
        after_send = is_send
    else:
        return events               # no two Sends side by side: nothing to merge
    out: list[Event] = []
    run: list[bytes] = []
    for event in events:
        if type(event) is Send:
            run.append(event.data)
            continue
        if run:
            out.append(Send(b"".join(run)))
            run = []
        out.append(event)
    if run:
        out.append(Send(b"".join(run)))
    return out


class LineTooLong(Exception):
    """More than the allowed number of bytes arrived without a line end."""


class LineBuffer:
    """Received bytes, consumed as lines or as fixed-length blocks.

    Lines end in LF; a CR before it is dropped (bare LF is accepted, as nginx
    and Dovecot do). The search for LF resumes where the last one stopped, so
    bytes arriving one at a time cost O(n) in total, not O(n^2); deleting from
    the front of a bytearray is amortised O(1) in CPython.

    The usual read (whole lines into an empty buffer) is kept as the bytes object it
    came as, lines cut from it by compiled slicing (``_data`` from ``_pos``), not copied
    into the bytearray and out again; anything else (a partial line, a literal, a peek)
    first moves what is left of it into the bytearray (``_spill``).
    """

    __slots__ = ("_buf", "_scanned", "_data", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0             # bytes already known to hold no LF
        self._data = b""              # the bytes of the last read, if _buf was empty then
        self._pos = 0                 # where the unread part of _data starts

    def __len__(self) -> int:
        return len(self._buf) + len(self._data) - self._pos

    def append(self, data: bytes) -> None:
        if self._pos < len(self._data):
            self._spill()
        elif len(self._buf) == 0 and type(data) is bytes:     # not a caller's bytearray
            self._data = data
            self._pos = 0
            self._scanned = 0
            return
        self._buf += data

    def _spill(self) -> None:
        """What is left of _data, into the (then empty) bytearray."""
        if self._pos < len(self._data):
            self._buf += self._data[self._pos:]
        self._data = b""
        self._pos = 0

    def next_line(self, limit: int) -> bytes | None:
        """Remove and return the next line without its line end, or None if
        it is not complete yet. Raise LineTooLong if the line (without CRLF)
        is, or is bound to become, longer than ``limit`` bytes."""
        data, pos = self._data, self._pos
        if pos < len(data):
            end = data.find(b"\n") if pos == 0 else data.find(b"\n", pos)   # 1 arg: cheaper
            if end >= 0:
                cut = end - 1 if end > pos and data[end - 1] == 13 else end
                if cut - pos > limit:
                    raise LineTooLong
                line = data[pos:cut]
                if end + 1 < len(data):
                    self._pos = end + 1
                else:
                    self._data = b""
                    self._pos = 0
                return line
            self._spill()                 # a partial line: the bytearray's way below
        buf = self._buf
        if not buf:                   # the usual last call of a feed: all lines taken
            return None               # (_scanned is 0: it never exceeds len(buf))
        end = buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(buf)
            # One byte over is fine while it is a CR: that may be the line end.
            if len(buf) > limit and not (len(buf) == limit + 1 and buf[-1] == 13):
                raise LineTooLong
            return None
        cut = end - 1 if end and buf[end - 1] == 13 else end
        if cut > limit:
            raise LineTooLong
        line = bytes(buf[:cut])
        del buf[:end + 1]
        self._scanned = 0
        return line

    def take(self, n: int) -> bytes | None:
        """Remove and return exactly ``n`` bytes, or None if fewer are here."""
        self._spill()
        if len(self._buf) < n:
            return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self._scanned = max(0, self._scanned - n)
        return data

    def discard(self, n: int) -> int:
        """Drop up to ``n`` bytes; return how many were dropped."""
        self._spill()
        n = min(n, len(self._buf))
        del self._buf[:n]
        self._scanned = max(0, self._scanned - n)
        return n

    def peek(self, n: int) -> bytes:
        self._spill()
        return bytes(self._buf[:n])

    def peek_all(self) -> bytes:
        if len(self._buf) == 0:     # the usual case (a login's leftover): no copy
            return self._data[self._pos:]
        return bytes(self._buf)

    def clear(self) -> None:
        if len(self._buf):
            self._buf.clear()
        self._scanned = 0
        self._data = b""
        self._pos = 0

    def skip_line(self, keep: int = 32) -> bytes | None:
        """Drop the rest of a line that is too long to keep, up to and including its LF.
        Return its last ``keep`` bytes (line end included), or None while the LF has not
        come: then all but the last ``keep`` bytes are dropped, so memory stays bounded."""
        self._spill()
        buf = self._buf
        end = buf.find(b"\n")
        self._scanned = 0
        if end < 0:
            del buf[:-keep]
            return None
        tail = bytes(buf[max(0, end + 1 - keep):end + 1])
        del buf[:end + 1]
        return tail
