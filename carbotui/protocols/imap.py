"""IMAP pre-auth state machines, sans-IO: bytes in, events out.

``ImapClientSide`` plays the IMAP server to a mail client until the client has
presented credentials (CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN,
AUTHENTICATE PLAIN). ``ImapBackendLogin`` plays the client to a mailbox
server: greeting, CAPABILITY, ID carrying the client's address, LOGIN.

Neither touches a socket. The asyncio glue feeds received bytes and carries
out the returned events (carbotui/protocols/events.py) in order.

Framing follows RFC 3501: a command is lines joined by literals; a line that
ends in ``{n}`` (synchronising: we answer ``+ OK`` first) or ``{n+}``
(LITERAL+, RFC 7888: the bytes follow at once) announces n raw bytes, after
which the command continues on the next line. Framing is kept apart from
parsing so that a command we refuse is still skipped as a whole: the bytes of
its literals are never mistaken for new commands.
"""
from __future__ import annotations

import enum
import re
from itertools import repeat
from dataclasses import dataclass, field
from typing import ClassVar

from carbotui.protocols.events import (
    Authenticate, BackendFailed, ClientId, LoginOK, LoginRejected, MailLimits, Send,
    StartTLS,
)
from carbotui.protocols.preauth import (
    AUTH_LINE, COMMAND, HANDED_OFF, WAIT_AUTH, WAIT_TLS, BackendLogin, ClientSide,
    command_table, describe,
)
from carbotui.protocols.sasl import (
    AuthDataError, AuthzidRefused, Event, LineTooLong, b64decode_strict, check_wire_safe,
    coalesce, decode_password, decode_plain, decode_username, safe_text,
)

__all__ = ["ImapClientSide", "ImapBackendLogin"]

CRLF = b"\r\n"

# ------------------------------------------------------------------ syntax

# A literal announcement at the end of a line: {n} or {n+}.
_LITERAL_RE = re.compile(rb"\{(\d+)(\+?)\}\Z")
# tag = 1*<ASTRING-CHAR except "+"> (RFC 3501 section 9), 7-bit only.
_TAG_RE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
# A command name is an atom.
_NAME_RE = re.compile(rb'[^\x00-\x20\x7f(){"\\]+')
_TOKEN_RE = re.compile(rb'''
    (?P<sp>\x20+)
  | (?P<open>\()
  | (?P<close>\))
  | "(?P<quoted>(?:[^"\\]|\\["\\])*)"
  | (?P<atom>[^\x00-\x20\x7f(){"\\]+)
''', re.VERBOSE)
_UNESCAPE_RE = re.compile(rb'\\(["\\])')
# The usual arguments (LOGIN user password, SELECT INBOX): atoms, each after spaces, as
# _TOKEN_RE would read them token by token (sp, atom, sp, atom...).
_ATOM_ARGS_RE = re.compile(rb'(?:\x20+[^\x00-\x20\x7f(){"\\]+)+\x20*')
# Strings we may send as a quoted string (printable ASCII); anything else
# goes as a literal.
_QUOTABLE_RE = re.compile(rb"[\x20-\x7e]*")

# Token kinds. Quoted strings and literals are both STRING.
ATOM, STRING, OPEN, CLOSE = "atom", "string", "(", ")"
Token = tuple[str, bytes]

# RFC 2971 limits for the client's ID.
_ID_MAX_PAIRS, _ID_MAX_KEY, _ID_MAX_VALUE = 30, 30, 1024


def _quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _reply(tag: bytes | None, status: bytes, text: bytes) -> bytes:
    return (tag or b"*") + b" " + status + b" " + text + CRLF


def _literal_size(digits: bytes) -> int | None:
    # More than 10 digits is too big for any limit; not calling int() on it
    # also avoids Python's 4300-digit int() guard on a hostile line.
    return int(digits) if len(digits) <= 10 else None


class _SyntaxError(Exception):
    """A command is malformed; the message goes into a BAD reply."""


# ------------------------------------------------------------ client side

@dataclass(slots=True)
class _Command:
    """One command being framed: its lines and the literals between them."""
    tag: bytes | None = None            # None until parsed (stays None if unparseable)
    name: str = ""
    args: list[Token] = field(default_factory=list)
    error: bytes | None = None          # set: the command is refused; send this when framed
    started: bool = False               # first line seen
    need_sep: bool = False              # the last token needs a space or ")" after it
    text_size: int = 0                  # bytes of line text so far
    literal_size: int = 0               # bytes of literals so far
    literal_need: int | None = None     # bytes of the current literal still to come
    skipping: bool = False              # dropping the rest of a line over max_line


# (id(limits), tls) -> (limits, greeting): the limits object is kept, so its id stays its own.
_GREETINGS: dict[tuple[int, bool], tuple[MailLimits, bytes]] = {}


class ImapClientSide(ClientSide):
    """The proxy as IMAP server, before login. See the module docstring."""

    TEMPORARY_CODE: ClassVar[bytes] = b"UNAVAILABLE"
    FAILED_CODE: ClassVar[bytes] = b"AUTHENTICATIONFAILED"
    CLOSING: ClassVar[bytes] = b"* BYE"
    IDLE_TIMEOUT: ClassVar[bytes] = b"* BYE Autologout; idle for too long\r\n"
    SHUTTING_DOWN: ClassVar[bytes] = b"* BYE Server shutting down, please reconnect\r\n"

    # (tag, mechanism) of the command waiting for its SASL line or auth result; at class
    # level, so a session sets it only when it has one.
    _pending: tuple[bytes, str] | None = None

    def __init__(self, limits: MailLimits, *, tls: bool):
        ClientSide.__init__(self, limits, tls=tls)      # not super(): one object less per login
        self._cmd = _Command()

    # ------------------------------------------------------------ public API

    @property
    def capability_line(self) -> str:
        """The CAPABILITY list for the connection as it is now (nginx's three
        variants: plain, starttls, starttls-only)."""
        limits = self._limits
        caps = list(limits.imap_capabilities)
        if self._privacy_required:
            caps += ["STARTTLS", "LOGINDISABLED"]          # no AUTH=PLAIN before TLS
        else:
            if limits.sasl_plain:
                caps.append("AUTH=PLAIN")
            if not self._tls and limits.starttls == "on":
                caps.append("STARTTLS")
        return " ".join(caps)

    def greeting(self) -> bytes:
        # The same few bytes for every connection with these limits: made once.
        key = (id(self._limits), self._tls)
        known = _GREETINGS.get(key)
        if known is None or known[0] is not self._limits:
            text = b"* OK [CAPABILITY %s] %s\r\n" % (
                self.capability_line.encode(), safe_text(self._limits.imap_greeting).encode())
            if len(_GREETINGS) > 64:              # settings reloaded many times
                _GREETINGS.clear()
            known = _GREETINGS[key] = (self._limits, text)
        return known[1]

    def tls_started(self) -> list[Event]:
        events = super().tls_started()
        self._cmd = _Command()
        return events

    def auth_succeeded(self, backend_response: bytes) -> tuple[list[Event], bytes]:
        """Answer the client's LOGIN/AUTHENTICATE with the backend's tagged
        reply text (``OK [CAPABILITY ...] Logged in``) under the client's tag.
        Returns the events and the bytes the client pipelined after its login
        command, which the relay must pass on to the backend."""
        self._expect(WAIT_AUTH, "auth_succeeded")
        tag, _ = self._pending  # type: ignore[misc]  # set in this state
        self._pending = None
        leftover = self._buf.peek_all()
        self._buf.clear()
        self._state = HANDED_OFF
        return [Send(tag + b" " + backend_response + CRLF)], leftover

    def throttled(self, message: str) -> list[Event]:
        """Refuse the user (or, before any login, the connection) and close."""
        if self._state is HANDED_OFF:
            raise RuntimeError("ImapClientSide.throttled() after auth_succeeded()")
        out: list[Event] = [Send(b"* BYE " + safe_text(message).encode() + CRLF)]
        if self._state is WAIT_AUTH:
            tag, mechanism = self._pending  # type: ignore[misc]  # set in this state
            command = b"LOGIN" if mechanism == "LOGIN" else b"AUTHENTICATE"
            out.append(Send(_reply(tag, b"NO", command + b" failed")))
        self._close(out, "throttled")
        return coalesce(out)

    # ---------------------------------------------------------- machinery

    def _auth_failed_reply(self, text: bytes) -> Event:
        tag, _ = self._pending  # type: ignore[misc]  # set in this state
        self._pending = None
        return Send(_reply(tag, b"NO", text))

    def _too_many_failures(self, out: list[Event]) -> None:
        self._bye(out, b"Too many invalid authentication attempts",
                  "too many authentication failures")

    def _refuse_backlog(self, out: list[Event]) -> None:
        self._bye(out, b"Too much data sent during authentication", "pipelined too much")

    def _bye(self, out: list[Event], text: bytes, reason: str) -> None:
        out.append(Send(b"* BYE " + text + CRLF))
        self._close(out, reason)

    def _forget_login(self) -> None:
        self._pending = None

    def _run(self) -> list[Event]:
        out: list[Event] = []
        while True:
            if self._state is COMMAND:
                if not self._step_command(out):
                    break
            elif self._state is AUTH_LINE:
                line = self._next_line(out)
                if line is None:
                    break
                self._auth_line(line, out)
            else:
                break
        return out

    def _next_line(self, out: list[Event]) -> bytes | None:
        # A SASL response line (AUTH_LINE) over the limit still ends the session: no
        # conforming client sends one (PLAIN needs a few hundred bytes).
        try:
            return self._buf.next_line(self._limits.max_line)
        except LineTooLong:
            self._bye(out, b"Command line too long", "line too long")
            return None

    def _step_command(self, out: list[Event]) -> bool:
        """Consume one line or one literal of the current command. False when
        more bytes are needed."""
        cmd = self._cmd
        if cmd.literal_need is not None:
            if cmd.error is not None:
                # Refused command: drop its literal as it streams in.
                cmd.literal_need -= self._buf.discard(cmd.literal_need)
                if cmd.literal_need:
                    return False
            else:
                data = self._buf.take(cmd.literal_need)
                if data is None:
                    return False
                if data.find(b"\0") >= 0:
                    cmd.error = _reply(cmd.tag, b"BAD", b"NUL byte in literal")
                else:
                    cmd.args.append((STRING, data))
                    cmd.need_sep = True
            cmd.literal_need = None
            return True
        if cmd.skipping:
            tail = self._buf.skip_line()
            if tail is None:
                return False
            # The refused line's end still frames the command: its literal, if any.
            cmd.skipping = False
            self._command_line(cmd, tail.rstrip(b"\r\n"), out, counted=False)
            return True
        try:
            line = self._buf.next_line(self._limits.max_line)
        except LineTooLong:
            self._too_long(cmd)
            return True
        if line is None:
            return False
        self._command_line(cmd, line, out)
        return True

    def _too_long(self, cmd: _Command) -> None:
        """A command line over max_line: refuse the command with BAD [TOOBIG] once it is
        framed, dropping the line as it streams in; the session goes on. RFC 9051 sets no
        line limit; RFC 7162 section 4 asks servers to take at least 8192 octets; the
        default max_line (64 KiB, Dovecot's imap_max_line_length) takes RFC 2971's largest
        ID (30 pairs of 30- and 1024-octet strings) even with every character escaped."""
        if not cmd.started:
            cmd.started = True
            start = self._buf.peek(64)
            m = _TAG_RE.match(start)
            cmd.tag = m.group() if m and start[m.end():m.end() + 1] == b" " else None
        cmd.error = _reply(cmd.tag, b"BAD", b"[TOOBIG] Command line too long")
        cmd.skipping = True

    def _command_line(self, cmd: _Command, line: bytes, out: list[Event], *,
                      counted: bool = True) -> None:
        limits = self._limits
        marker = _LITERAL_RE.search(line) if line[-1:] == b"}" else None
        if counted:
            cmd.text_size += len(line)
            if cmd.text_size > limits.max_line and cmd.error is None:
                # The lines between a command's literals add up to more than a line.
                cmd.error = _reply(cmd.tag, b"BAD", b"[TOOBIG] Command line too long")
        if cmd.error is None:
            text = line[:marker.start()] if marker else line
            cmd.error = self._parse_text(cmd, text, has_literal=marker is not None)
        if marker is None:                              # the command is complete
            self._cmd = _Command()
            if cmd.error is not None:
                out.append(Send(cmd.error))
            else:
                self._execute(cmd, out)
            return
        size = _literal_size(marker.group(1))
        sync = not marker.group(2)
        if sync and cmd.error is not None:
            # The client waits for "+" before sending the literal: refuse now
            # and it abandons the command (no password sent in vain).
            self._cmd = _Command()
            out.append(Send(cmd.error))
            return
        if size is None or cmd.literal_size + size > limits.max_literal:
            if sync:
                self._cmd = _Command()
                out.append(Send(_reply(cmd.tag, b"BAD", b"[TOOBIG] Literal too big")))
                return
            if size is None:
                # More than 10 digits: bytes we could not even count are coming.
                self._bye(out, b"[TOOBIG] Literal too big", "literal too big")
                return
            # LITERAL+ (RFC 7888 section 4): the bytes are coming whether we like it or
            # not. Drop them as they stream in, then refuse the command.
            if cmd.error is None:
                cmd.error = _reply(cmd.tag, b"BAD", b"[TOOBIG] Literal too big")
            cmd.literal_need = size
            return
        cmd.literal_size += size
        cmd.literal_need = size
        if sync:
            out.append(Send(b"+ OK" + CRLF))

    def _parse_text(self, cmd: _Command, text: bytes, *, has_literal: bool) -> bytes | None:
        """Parse one line of a command (without its literal marker) into
        ``cmd``. Return the reply that refuses the command, or None."""
        pos = 0
        if not cmd.started:
            cmd.started = True
            if not text:
                return _reply(None, b"BAD", b"Empty command line")
            m = _TAG_RE.match(text)
            if m is None or text[m.end():m.end() + 1] not in (b" ", b""):
                return _reply(None, b"BAD", b"Invalid tag")
            cmd.tag = m.group()
            if text.find(b"\0") >= 0:          # find, not `in`: see imapstream.py
                return _reply(cmd.tag, b"BAD", b"NUL byte in command")
            if m.end() == len(text) and not has_literal:
                return _reply(cmd.tag, b"BAD", b"Missing command")
            m = _NAME_RE.match(text, m.end() + 1)
            if m is None or text[m.end():m.end() + 1] not in (b" ", b""):
                return _reply(cmd.tag, b"BAD", b"Invalid command name")
            cmd.name = m.group().decode("ascii", "replace").upper()
            pos = m.end()
            cmd.need_sep = True
            refusal = self._refusal(cmd.tag, cmd.name)
            if refusal is not None:
                return refusal
        elif text.find(b"\0") >= 0:
            return _reply(cmd.tag, b"BAD", b"NUL byte in command")
        try:
            self._tokenize(cmd, text, pos)
        except _SyntaxError as e:
            return _reply(cmd.tag, b"BAD", str(e).encode())
        if has_literal:
            if cmd.name not in ("LOGIN", "ID"):
                return _reply(cmd.tag, b"BAD", b"Unexpected literal")
            if cmd.need_sep:
                return _reply(cmd.tag, b"BAD", b"Missing space before literal")
        return None

    def _refusal(self, tag: bytes, name: str) -> bytes | None:
        """Refusals known from the command name alone, decided before any
        argument (or literal) is read."""
        if name not in _COMMANDS:
            return _reply(tag, b"BAD", b"Unknown command or not allowed before login")
        if name in ("LOGIN", "AUTHENTICATE") and self._privacy_required:
            return _reply(tag, b"NO", b"[PRIVACYREQUIRED] Plaintext authentication disallowed "
                                      b"on non-secure connections; use STARTTLS first")
        return None

    @staticmethod
    def _tokenize(cmd: _Command, text: bytes, pos: int) -> None:
        args, need_sep, end = cmd.args, cmd.need_sep, len(text)
        if pos < end and _ATOM_ARGS_RE.fullmatch(text, pos) is not None:
            # Only atoms, each after a space: the loop below would take them one by one
            # (split() cuts at the spaces alone: an atom holds no other whitespace).
            args.extend(zip(repeat(ATOM), text[pos:].split()))
            cmd.need_sep = text[-1] != 0x20
            return
        while pos < end:
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                bad = text[pos:pos + 1]
                raise _SyntaxError({b'"': "Invalid quoted string", b"{": "Invalid literal",
                                    b"\\": "Unexpected backslash"}.get(bad, "Invalid character"))
            kind, pos = m.lastgroup, m.end()
            if kind == "sp":
                need_sep = False
                continue
            if kind == "close":
                args.append((CLOSE, b""))
                need_sep = True
                continue
            if need_sep:
                raise _SyntaxError("Missing space between arguments")
            if kind == "open":
                args.append((OPEN, b""))
            elif kind == "quoted":
                args.append((STRING, _UNESCAPE_RE.sub(rb"\1", m.group("quoted"))))
                need_sep = True
            else:
                args.append((ATOM, m.group()))
                need_sep = True
        cmd.need_sep = need_sep

    # ----------------------------------------------------------- commands

    def _execute(self, cmd: _Command, out: list[Event]) -> None:
        getattr(self, _COMMANDS[cmd.name])(cmd.tag, cmd.args, out)

    def _do_capability(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if args:
            out.append(Send(_reply(tag, b"BAD", b"CAPABILITY takes no arguments")))
            return
        out.append(Send(b"* CAPABILITY " + self.capability_line.encode() + CRLF
                        + _reply(tag, b"OK", b"CAPABILITY completed.")))

    def _do_noop(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if args:
            out.append(Send(_reply(tag, b"BAD", b"NOOP takes no arguments")))
            return
        out.append(Send(_reply(tag, b"OK", b"NOOP completed.")))

    def _do_logout(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if args:
            out.append(Send(_reply(tag, b"BAD", b"LOGOUT takes no arguments")))
            return
        out.append(Send(b"* BYE Logging out" + CRLF + _reply(tag, b"OK", b"Logout completed.")))
        self._close(out, "client logged out")

    def _do_id(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        try:
            fields = _parse_id(args)
        except _SyntaxError as e:
            out.append(Send(_reply(tag, b"BAD", str(e).encode())))
            return
        ours = self._limits.imap_id
        if ours:
            items = b" ".join(_quote(safe_text(k).encode()) + b" " + _quote(safe_text(v).encode())
                              for k, v in ours)
            line = b"* ID (" + items + b")" + CRLF
        else:
            line = b"* ID NIL" + CRLF
        out.append(Send(line + _reply(tag, b"OK", b"ID completed.")))
        out.append(ClientId(fields))

    def _do_starttls(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if args:
            out.append(Send(_reply(tag, b"BAD", b"STARTTLS takes no arguments")))
        elif self._tls:
            out.append(Send(_reply(tag, b"BAD", b"TLS is already active.")))
        elif self._limits.starttls == "off":
            out.append(Send(_reply(tag, b"BAD", b"STARTTLS is not available.")))
        else:
            out.append(Send(_reply(tag, b"OK", b"Begin TLS negotiation now.")))
            out.append(StartTLS())
            # Bytes that came in plaintext after STARTTLS must not be run
            # as if they had come over TLS (CVE-2011-0411-style injection).
            self._buf.clear()
            self._state = WAIT_TLS

    def _do_login(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if len(args) != 2 or any(kind not in (ATOM, STRING) for kind, _ in args):
            out.append(Send(_reply(tag, b"BAD", b"LOGIN expects a username and a password")))
            return
        try:
            username = decode_username(args[0][1])
            password = decode_password(args[1][1])
        except AuthDataError as e:
            out.append(Send(_reply(tag, b"BAD", str(e).encode())))
            return
        self._pending = (tag, "LOGIN")
        self._begin_auth(Authenticate(username, password, mechanism="LOGIN"), out)

    def _do_authenticate(self, tag: bytes, args: list[Token], out: list[Event]) -> None:
        if not 1 <= len(args) <= 2 or any(kind != ATOM for kind, _ in args):
            out.append(Send(_reply(tag, b"BAD", b"AUTHENTICATE expects a mechanism "
                                               b"and an optional initial response")))
            return
        if args[0][1].upper() != b"PLAIN" or not self._limits.sasl_plain:
            out.append(Send(_reply(tag, b"NO", b"Unsupported authentication mechanism.")))
            return
        if len(args) == 2:                              # SASL-IR (RFC 4959)
            response = args[1][1]
            self._plain(tag, b"" if response == b"=" else response, out)
            return
        out.append(Send(b"+ " + CRLF))
        self._pending = (tag, "PLAIN")
        self._state = AUTH_LINE

    def _auth_line(self, line: bytes, out: list[Event]) -> None:
        tag, _ = self._pending  # type: ignore[misc]  # set in this state
        self._pending = None
        self._state = COMMAND
        if line == b"*":
            out.append(Send(_reply(tag, b"BAD", b"Authentication cancelled.")))
            return
        self._plain(tag, line, out)

    def _plain(self, tag: bytes, b64: bytes, out: list[Event]) -> None:
        try:
            creds = decode_plain(b64decode_strict(b64))
        except AuthzidRefused as e:             # RFC 4616 §2, RFC 5530
            out.append(Send(_reply(tag, b"NO", b"[AUTHORIZATIONFAILED] " + str(e).encode())))
            return
        except AuthDataError as err:            # not e: mypyc would type it as the clause above
            out.append(Send(_reply(tag, b"BAD", str(err).encode())))
            return
        self._pending = (tag, "PLAIN")
        self._begin_auth(Authenticate(creds.username, creds.password, creds.authzid,
                                      mechanism="PLAIN"), out)


_COMMANDS = command_table("CAPABILITY", "NOOP", "LOGOUT", "ID", "STARTTLS", "LOGIN",
                          "AUTHENTICATE")


def _parse_id(args: list[Token]) -> dict[str, str | None]:
    """``ID NIL`` or ``ID ("key" "value" "key" NIL ...)`` (RFC 2971) to a dict
    with lower-cased keys. The first occurrence of a key wins."""
    if len(args) == 1 and args[0][0] == ATOM and args[0][1].upper() == b"NIL":
        return {}
    if len(args) < 2 or args[0][0] != OPEN or args[-1][0] != CLOSE:
        raise _SyntaxError("ID expects NIL or a parenthesised list")
    inner = args[1:-1]
    if len(inner) % 2 or len(inner) > 2 * _ID_MAX_PAIRS:
        raise _SyntaxError("ID expects up to 30 field-value pairs")
    fields: dict[str, str | None] = {}
    for (key_kind, key), (value_kind, value) in zip(inner[::2], inner[1::2]):
        if key_kind != STRING or len(key) > _ID_MAX_KEY:
            raise _SyntaxError("ID field names must be strings of up to 30 bytes")
        if value_kind == ATOM and value.upper() == b"NIL":
            decoded = None
        elif value_kind == STRING and len(value) <= _ID_MAX_VALUE:
            decoded = value.decode("utf-8", "replace")
        else:
            raise _SyntaxError("ID values must be NIL or strings of up to 1024 bytes")
        fields.setdefault(key.decode("utf-8", "replace").lower(), decoded)
    return fields


# ----------------------------------------------------------- backend side

_MAX_BACKEND_LITERAL = 64 * 1024
_CAPS_CODE_RE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_RESP_CODE_RE = re.compile(rb"[A-Za-z]+ \[([^\] ]+)")
# Refusals after which a later retry may succeed (RFC 5530).
_TEMPORARY_CODES = frozenset({b"UNAVAILABLE", b"SERVERBUG", b"LIMIT", b"INUSE"})
# LITERAL- (RFC 7888) allows non-synchronising literals up to this size.
_LITERAL_MINUS_MAX = 4096


class _Step(enum.Enum):
    GREETING = enum.auto()
    CAPABILITY = enum.auto()
    ID = enum.auto()
    LOGIN = enum.auto()
    DONE = enum.auto()


# Module constants rather than attributes of _Step: see carbotui/protocols/preauth.py (Enum cost).
_GREETING, _CAPABILITY, _ID, _LOGIN, _DONE = _Step


_NOT_PRINTABLE_RE = re.compile(r"[^\x20-\x7e]")


def _id_value(text: str, limit: int = 200) -> bytes:
    # Printable ASCII only: values may come from the client (its ID name),
    # and every IMAP server accepts them in a quoted string.
    text = text[:limit]
    if not (text.isascii() and text.isprintable()):     # for ASCII: all in \x20-\x7e
        text = _NOT_PRINTABLE_RE.sub("?", text)
    value = text.encode("ascii")
    if value.find(b'"') >= 0 or value.find(b"\\") >= 0:
        return _quote(value)
    return b'"' + value + b'"'


class ImapBackendLogin(BackendLogin):
    """The proxy logging in to an IMAP mailbox server with the client's
    credentials. ``feed`` returns Sends for the server followed, once, by
    LoginOK, LoginRejected or BackendFailed."""

    GREETING: ClassVar[enum.Enum] = _GREETING
    DONE: ClassVar[enum.Enum] = _DONE

    def __init__(self, username: str, password: str, *, client_ip: str, client_port: int,
                 local_ip: str, local_port: int, client_ua: str = "", send_id: bool = True):
        check_wire_safe(username, password)
        self._username = username.encode("utf-8")
        self._password = password.encode("utf-8")
        # The ID's fields; quoted only when an ID is sent (most logins: once).
        self._id_fields = (client_ip, client_port, local_ip, local_port, client_ua)
        self._send_id = send_id
        self._id_tag: bytes | None = None     # a pipelined ID still to be answered
        BackendLogin.__init__(self)
        self._tag = b""
        self._tags = 0
        self._caps: set[bytes] | None = None
        self._login_chunks: list[bytes] = []   # LOGIN parts waiting for "+" (sync literals)
        self._first_line: bytes | None = None  # a response interrupted by a literal
        self._quotable_pair: tuple[bool, bool] | None = None   # see _quotable

    def __repr__(self) -> str:
        return f"<ImapBackendLogin step={self._step.name} tag={self._tag!r}>"

    # ------------------------------------------------------------------

    def _command(self, out: list[Event], command: bytes) -> None:
        self._tags += 1
        self._tag = b"A%d" % self._tags
        out.append(Send(self._tag + b" " + command + CRLF))

    def _line(self, line: bytes, out: list[Event]) -> None:
        if self._first_line is None:
            self._first_line = line
        marker = _LITERAL_RE.search(line) if line[-1:] == b"}" else None
        if marker:
            # Untagged data (an ID value, say) may carry a literal: skip
            # it (feed drops self._skip bytes), the response goes on after it.
            size = _literal_size(marker.group(1))
            if size is None or size > _MAX_BACKEND_LITERAL:
                self._fail(out, "backend sent a literal larger than 64 KiB")
                return
            self._skip = size
            return
        line, self._first_line = self._first_line, None
        step = self._step
        if step is _GREETING:
            if line[:5].upper() not in (b"* OK ", b"* OK"):
                self._fail(out, f"unexpected greeting from backend: {describe(line)}")
                return
            caps = _CAPS_CODE_RE.search(line)
            if caps is None:
                self._command(out, b"CAPABILITY")
                self._step = _CAPABILITY
            else:
                self._caps = set(caps.group(1).upper().split())
                self._after_capabilities(out)
            return
        if line[:1] == b"+":
            if step is _LOGIN and self._login_chunks:
                out.append(Send(self._login_chunks.pop(0)))
            else:
                self._fail(out, "backend sent an unexpected continuation request")
            return
        if line[:1] == b"*":
            words = line[2:].split(None, 1)
            keyword = words[0].upper() if words else b""
            if keyword == b"BYE":
                self._fail(out, f"backend closed the session: {describe(line)}")
            elif keyword == b"CAPABILITY" and step is _CAPABILITY:
                self._caps = set(line[2:].upper().split()[1:])
            return                     # other untagged data is of no use before login
        tag, _, rest = line.partition(b" ")
        if tag == self._id_tag:
            # The answer to a pipelined ID, whatever it is (some servers say BAD:
            # Zimbra bug 68678); the LOGIN answer follows.
            self._id_tag = None
            return
        if tag != self._tag:
            self._fail(out, f"backend reply with unexpected tag: {describe(line)}")
            return
        status = rest.split(b" ", 1)[0].upper()
        if step is _CAPABILITY:
            if status != b"OK":
                self._fail(out, f"backend refused CAPABILITY: {describe(line)}")
                return
            if self._caps is None:
                caps = _CAPS_CODE_RE.search(rest)
                self._caps = set(caps.group(1).upper().split()) if caps else set()
            self._after_capabilities(out)
        elif step is _ID:
            # Whatever the answer: some servers answer ID with BAD (Zimbra
            # bug 68678), which must not stop the login.
            self._login(out)
        elif step is _LOGIN:
            self._step = _DONE
            if status == b"OK":
                out.append(LoginOK(rest))
            elif status == b"NO":
                code = _RESP_CODE_RE.match(rest)
                temporary = code is not None and code.group(1).upper() in _TEMPORARY_CODES
                out.append(LoginRejected(rest, temporary=temporary))
            else:
                out.append(BackendFailed(f"backend answered LOGIN with: {describe(rest)}"))

    def _after_capabilities(self, out: list[Event]) -> None:
        if b"LOGINDISABLED" in self._caps:  # type: ignore[operator]
            self._fail(out, "backend refuses LOGIN on this connection (LOGINDISABLED): "
                            "enable TLS to the backend or allow plaintext logins there")
        elif self._send_id and b"ID" in self._caps:  # type: ignore[operator]
            self._command(out, b"ID (" + self._id_args() + b")")
            self._step = _ID
            if not self._login_waits_for_continuation():
                # Pipelined: LOGIN goes in the same write, saving a round trip per
                # session; the ID's own tagged answer is then skipped (see _line).
                self._id_tag = self._tag
                self._login(out)
        else:
            self._login(out)

    def _id_args(self) -> bytes:
        client_ip, client_port, local_ip, local_port, client_ua = self._id_fields
        via = f"{client_ua},carbotui" if client_ua else "carbotui"
        return (b'"X-ORIGINATING-IP" %s "X-ORIGINATING-PORT" "%d" '
                b'"X-CONNECTED-IP" %s "X-CONNECTED-PORT" "%d" "X-VIA" %s' % (
                    _id_value(client_ip), client_port, _id_value(local_ip), local_port,
                    _id_value(via)))

    def _literal_plus(self, value: bytes) -> bool:
        caps = self._caps or set()          # read after CAPABILITY: always set
        return b"LITERAL+" in caps or (b"LITERAL-" in caps and len(value) <= _LITERAL_MINUS_MAX)

    def _quotable(self) -> tuple[bool, bool]:
        """Whether the username and the password may go as quoted strings (asked by
        _login_waits_for_continuation and by _login: looked at once)."""
        if self._quotable_pair is None:
            self._quotable_pair = (_QUOTABLE_RE.fullmatch(self._username) is not None,
                                   _QUOTABLE_RE.fullmatch(self._password) is not None)
        return self._quotable_pair

    def _login_waits_for_continuation(self) -> bool:
        user_ok, password_ok = self._quotable()
        return ((not user_ok and not self._literal_plus(self._username))
                or (not password_ok and not self._literal_plus(self._password)))

    def _login(self, out: list[Event]) -> None:
        """LOGIN with quoted strings where possible, else literals; a
        synchronising literal splits the command where we must wait for "+"."""
        self._tags += 1
        self._tag = b"A%d" % self._tags
        caps = self._caps
        chunks: list[bytes] = []
        current = self._tag + b" LOGIN"
        for value, quotable in zip((self._username, self._password), self._quotable()):
            if quotable:
                current += b" " + _quote(value)
            elif self._literal_plus(value):
                current += b" {%d+}\r\n" % len(value) + value
            else:
                chunks.append(current + b" {%d}\r\n" % len(value))
                current = value
        chunks.append(current + CRLF)
        out.append(Send(chunks[0]))
        self._login_chunks = chunks[1:]
        self._step = _LOGIN
