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
from dataclasses import dataclass
from typing import ClassVar, Final

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

# Final: mypyc keeps these in C statics, not one globals-dict lookup per use.
CRLF: Final = b"\r\n"

# ------------------------------------------------------------------ syntax

# A literal announcement at the end of a line: {n} or {n+}.
_LITERAL_RE: Final = re.compile(rb"\{(\d+)(\+?)\}\Z")
# tag = 1*<ASTRING-CHAR except "+"> (RFC 3501 section 9), 7-bit only.
_TAG_RE: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
# A command name is an atom.
_NAME_RE: Final = re.compile(rb'[^\x00-\x20\x7f(){"\\]+')
_TOKEN_RE: Final = re.compile(rb'''
    (?P<sp>\x20+)
  | (?P<open>\()
  | (?P<close>\))
  | "(?P<quoted>(?:[^"\\]|\\["\\])*)"
  | (?P<atom>[^\x00-\x20\x7f(){"\\]+)
''', re.VERBOSE)
_UNESCAPE_RE: Final = re.compile(rb'\\(["\\])')
# The usual arguments (LOGIN user password, SELECT INBOX): atoms, each after spaces, as
# _TOKEN_RE would read them token by token (sp, atom, sp, atom...).
_ATOM_ARGS_RE: Final = re.compile(rb'(?:\x20+[^\x00-\x20\x7f(){"\\]+)+\x20*')
# Strings we may send as a quoted string (printable ASCII); anything else
# goes as a literal.
_QUOTABLE_RE = re.compile(rb"[\x20-\x7e]*")



def _table(allowed: bytes) -> bytes:
    """A bytes.translate table that keeps the ``allowed`` bytes and changes every other
    one (c -> c ^ 1): ``value.translate(t) == value`` says all of value is allowed.
    translate is compiled by mypyc, and returns value itself when nothing changed."""
    return bytes(c if c in allowed else c ^ 1 for c in range(256))


_ALL: Final = bytes(range(256))
# What _TAG_RE, an atom of _TOKEN_RE, and a quoted string without escapes (nor NUL,
# which the strict parser refuses in a command) take, byte by byte.
_TAG_TABLE: Final = _table(bytes(c for c in _ALL if 0x20 < c < 0x7f and c not in b'(){%*"\\+'))
_ATOM_TABLE: Final = _table(bytes(c for c in _ALL if c > 0x20 and c != 0x7f and c not in b'(){"\\'))
_PLAIN_QUOTED_TABLE: Final = _table(bytes(c for c in _ALL if c and c not in b'"\\'))
_NO_ESCAPE_TABLE: Final = _table(bytes(c for c in _ALL if c not in b'"\\'))
# Printable ASCII (_QUOTABLE_RE) kept, anything else "?": the ID values' rule.
_PRINTABLE_OR_QMARK: Final = bytes(c if 0x20 <= c <= 0x7e else 0x3F for c in range(256))

# Token kinds. Quoted strings and literals are both STRING.
ATOM: Final = "atom"
STRING: Final = "string"
OPEN: Final = "("
CLOSE: Final = ")"
Token = tuple[str, bytes]

# RFC 2971 limits for the client's ID.
_ID_MAX_PAIRS: Final = 30
_ID_MAX_KEY: Final = 30
_ID_MAX_VALUE: Final = 1024


def _quote(value: bytes) -> bytes:
    if value.translate(_NO_ESCAPE_TABLE) == value:    # nothing to escape: the usual value
        return b'"' + value + b'"'
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

@dataclass(slots=True, init=False)
class _Command:
    """One command being framed: its lines and the literals between them. (A written
    __init__: the generated one is interpreted even when compiled; see events.py.)"""
    tag: bytes | None                   # None until parsed (stays None if unparseable)
    name: str
    args: list[Token]
    error: bytes | None                 # set: the command is refused; send this when framed
    started: bool                       # first line seen
    need_sep: bool                      # the last token needs a space or ")" after it
    text_size: int                      # bytes of line text so far
    literal_size: int                   # bytes of literals so far
    literal_need: int | None            # bytes of the current literal still to come
    skipping: bool                      # dropping the rest of a line over max_line

    def __init__(self) -> None:
        self.tag = None
        self.name = ""
        self.args = []
        self.error = None
        self.started = False
        self.need_sep = False
        self.text_size = 0
        self.literal_size = 0
        self.literal_need = None
        self.skipping = False


# (id(limits), tls) -> (limits, greeting): the limits object is kept, so its id stays its own.
_GREETINGS: Final[dict[tuple[int, bool], tuple[MailLimits, bytes]]] = {}


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
        pending = self._pending
        assert pending is not None                      # set in this state
        tag: bytes = pending[0]
        self._pending = None
        leftover = self._buf.peek_all()
        self._buf.clear()
        self._state = HANDED_OFF
        return [Send(b"%s %s\r\n" % (tag, backend_response))], leftover

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
        if _PLAIN_LOGIN and not cmd.started and counted and self._plain_login(line, out):
            return
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

    def _plain_login(self, line: bytes, out: list[Event]) -> bool:
        """The usual login line, ``tag LOGIN user password`` with single spaces, each
        argument an atom or a quoted string without escapes: run it as the strict path
        (_parse_text, _tokenize, _execute) would, with a handful of compiled bytes
        operations instead of a dozen regex and method calls. False, having done
        nothing, for any other line: the strict path judges it.
        tests/unit/test_imap_fastpath.py feeds odd lines to both and compares."""
        if line.endswith(b"}"):                  # a literal may follow: the strict path
            return False
        parts = line.split(b" ")
        if len(parts) != 4:
            return False
        tag, name, user, password = parts
        if name != b"LOGIN" and name != b"login":
            return False
        if not tag or tag.translate(_TAG_TABLE) != tag:
            return False
        raw_user = _plain_astring(user)
        if raw_user is None:
            return False
        raw_password = _plain_astring(password)
        if raw_password is None:
            return False
        refusal = self._refusal(tag, "LOGIN")
        if refusal is not None:
            out.append(Send(refusal))
        else:
            self._login(tag, raw_user, raw_password, out)
        return True

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
        # The names of _COMMANDS (_refusal let no other through), called directly:
        # compiled calls, not a getattr and a bound method per command.
        name, tag, args = cmd.name, cmd.tag, cmd.args
        assert tag is not None                          # parsed: the command has a tag
        if name == "LOGIN":
            self._do_login(tag, args, out)
        elif name == "CAPABILITY":
            self._do_capability(tag, args, out)
        elif name == "NOOP":
            self._do_noop(tag, args, out)
        elif name == "LOGOUT":
            self._do_logout(tag, args, out)
        elif name == "ID":
            self._do_id(tag, args, out)
        elif name == "STARTTLS":
            self._do_starttls(tag, args, out)
        elif name == "AUTHENTICATE":
            self._do_authenticate(tag, args, out)
        else:
            getattr(self, _COMMANDS[name])(tag, args, out)

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
        self._login(tag, args[0][1], args[1][1], out)

    def _login(self, tag: bytes, raw_user: bytes, raw_password: bytes,
               out: list[Event]) -> None:
        try:
            username = decode_username(raw_user)
            password = decode_password(raw_password)
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


# Whether _command_line tries ImapClientSide._plain_login first (tests turn it off to
# compare it with the strict path).
_PLAIN_LOGIN: Final = True

_COMMANDS: Final = command_table("CAPABILITY", "NOOP", "LOGOUT", "ID", "STARTTLS", "LOGIN",
                          "AUTHENTICATE")


def _plain_astring(part: bytes) -> bytes | None:
    """An argument of ImapClientSide._plain_login: an atom, or a quoted string without
    backslash, NUL or inner quote, as its value; None for anything else."""
    if part.startswith(b'"'):
        if len(part) < 2 or not part.endswith(b'"'):
            return None
        inner = part[1:len(part) - 1]   # not [1:-1]: mypyc 2.4 fails it on b'"' (SystemError)
        return inner if inner.translate(_PLAIN_QUOTED_TABLE) == inner else None
    if part and part.translate(_ATOM_TABLE) == part:
        return part
    return None


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

_MAX_BACKEND_LITERAL: Final = 64 * 1024
_CAPS_CODE_RE: Final = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_RESP_CODE_RE: Final = re.compile(rb"[A-Za-z]+ \[([^\] ]+)")
# Refusals after which a later retry may succeed (RFC 5530).
_TEMPORARY_CODES: Final = frozenset({b"UNAVAILABLE", b"SERVERBUG", b"LIMIT", b"INUSE"})
# LITERAL- (RFC 7888) allows non-synchronising literals up to this size.
_LITERAL_MINUS_MAX: Final = 4096


class _Step(enum.Enum):
    GREETING = enum.auto()
    CAPABILITY = enum.auto()
    ID = enum.auto()
    LOGIN = enum.auto()
    DONE = enum.auto()


# Module constants rather than attributes of _Step: see carbotui/protocols/preauth.py (Enum cost).
_GREETING: Final = _Step.GREETING
_CAPABILITY: Final = _Step.CAPABILITY
_ID: Final = _Step.ID
_LOGIN: Final = _Step.LOGIN
_DONE: Final = _Step.DONE


_NOT_PRINTABLE_RE = re.compile(r"[^\x20-\x7e]")


# _id_value's answers: the same few addresses and client names come back session after
# session (about 1,300 instructions each to build, three per login). Bounded: emptied
# when full, so names a client makes up cost memory only up to this.
_ID_VALUES: Final[dict[str, bytes]] = {}
_ID_VALUES_MAX: Final = 1024
_ID_VALUE_CHARS: Final = 200               # of a value sent on, the rest cut


def _id_value(text: str) -> bytes:
    # Printable ASCII only: values may come from the client (its ID name),
    # and every IMAP server accepts them in a quoted string. What
    # _NOT_PRINTABLE_RE.sub("?", text) gives, with compiled operations: "replace" makes
    # each non-ASCII character (a surrogate too) one "?", the table the ASCII controls.
    known = _ID_VALUES.get(text)
    if known is not None:
        return known
    value = _quote(text[:_ID_VALUE_CHARS].encode("ascii", "replace")
                   .translate(_PRINTABLE_OR_QMARK))
    if len(text) <= _ID_VALUE_CHARS:
        if len(_ID_VALUES) >= _ID_VALUES_MAX:
            _ID_VALUES.clear()
        _ID_VALUES[text] = value
    return value


class _Caps:
    """What the login needs of a server's capabilities (the words, upper-cased)."""
    __slots__ = ("login_disabled", "id", "literal_plus", "literal_minus")

    def __init__(self, words: list[bytes]) -> None:
        self.login_disabled = b"LOGINDISABLED" in words
        self.id = b"ID" in words
        self.literal_plus = b"LITERAL+" in words
        self.literal_minus = b"LITERAL-" in words


# A server's greeting is the same line at every login: its line -> its _Caps, parsed once
# (bounded: a server whose greeting changes only refills it).
_GREETING_CAPS: Final[dict[bytes, _Caps]] = {}
_GREETING_CAPS_MAX: Final = 64
_GREETING_CAPS_LINE: Final = 4096


def _greeting_caps(line: bytes) -> _Caps | None:
    """The [CAPABILITY ...] of a greeting already checked to start with "* OK"."""
    known = _GREETING_CAPS.get(line)
    if known is not None:
        return known
    caps = _CAPS_CODE_RE.search(line)
    if caps is None:
        return None
    known = _Caps(caps.group(1).upper().split())
    if len(line) <= _GREETING_CAPS_LINE:
        if len(_GREETING_CAPS) >= _GREETING_CAPS_MAX:
            _GREETING_CAPS.clear()
        _GREETING_CAPS[line] = known
    return known


def _after_tag(line: bytes, tag: bytes | None) -> bytes | None:
    """The rest of ``line`` after ``tag`` and a space, or None: line.partition(b" ")
    when the tag is the one expected (a tag of ours holds no space)."""
    if tag is None:
        return None
    n = len(tag)
    if line.startswith(tag) and line[n:n + 1] == b" ":
        return line[n + 1:]
    return None


def _status(rest: bytes) -> bytes:
    """The status word of a tagged reply, upper-cased."""
    if rest.startswith(b"OK ") or rest == b"OK":
        return b"OK"
    return rest.split(b" ", 1)[0].upper()


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
        self._caps: _Caps | None = None
        self._login_chunks: list[bytes] = []   # LOGIN parts waiting for "+" (sync literals)
        self._first_line: bytes | None = None  # a response interrupted by a literal

    def __repr__(self) -> str:
        return f"<ImapBackendLogin step={self._step.name} tag={self._tag!r}>"

    # ------------------------------------------------------------------

    def _command(self, command: bytes) -> bytes:
        self._tags += 1
        self._tag = b"A%d" % self._tags
        return self._tag + b" " + command + CRLF

    def _line(self, line: bytes, out: list[Event]) -> None:
        if self._first_line is None:
            self._first_line = line
        marker = _LITERAL_RE.search(line) if line.endswith(b"}") else None
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
            head = line[:5]
            if (head != b"* OK " and head != b"* OK"
                    and head.upper() not in (b"* OK ", b"* OK")):     # "* OKAY" is not
                self._fail(out, f"unexpected greeting from backend: {describe(line)}")
                return
            caps = _greeting_caps(line)
            if caps is None:
                out.append(Send(self._command(b"CAPABILITY")))
                self._step = _CAPABILITY
            else:
                self._caps = caps
                self._after_capabilities(out)
            return
        if line.startswith(b"+"):
            if step is _LOGIN and self._login_chunks:
                out.append(Send(self._login_chunks.pop(0)))
            else:
                self._fail(out, "backend sent an unexpected continuation request")
            return
        if line.startswith(b"*"):
            if len(line) > 2:
                c = line[2]
                if c > 0x20 and c != 0x42 and c != 0x62 and c != 0x43 and c != 0x63:
                    return      # the word after "* " is no BYE nor CAPABILITY (* ID, say)
            words = line[2:].split(None, 1)
            keyword = words[0].upper() if words else b""
            if keyword == b"BYE":
                self._fail(out, f"backend closed the session: {describe(line)}")
            elif keyword == b"CAPABILITY" and step is _CAPABILITY:
                self._caps = _Caps(line[2:].upper().split()[1:])
            return                     # other untagged data is of no use before login
        if _after_tag(line, self._id_tag) is not None:
            # The answer to a pipelined ID, whatever it is (some servers say BAD:
            # Zimbra bug 68678); the LOGIN answer follows.
            self._id_tag = None
            return
        rest = _after_tag(line, self._tag)
        if rest is None:
            tag, _, rest = line.partition(b" ")
            if tag == self._id_tag:
                self._id_tag = None
                return
            if tag != self._tag:
                self._fail(out, f"backend reply with unexpected tag: {describe(line)}")
                return
        if step is _CAPABILITY:
            if _status(rest) != b"OK":
                self._fail(out, f"backend refused CAPABILITY: {describe(line)}")
                return
            if self._caps is None:
                code = _CAPS_CODE_RE.search(rest)
                self._caps = _Caps(code.group(1).upper().split() if code else [])
            self._after_capabilities(out)
        elif step is _ID:
            # Whatever the answer: some servers answer ID with BAD (Zimbra
            # bug 68678), which must not stop the login.
            self._login(out, b"")
        elif step is _LOGIN:
            self._step = _DONE
            status = _status(rest)
            if status == b"OK":
                out.append(LoginOK(rest))
            elif status == b"NO":
                code = _RESP_CODE_RE.match(rest)
                temporary = code is not None and code.group(1).upper() in _TEMPORARY_CODES
                out.append(LoginRejected(rest, temporary=temporary))
            else:
                out.append(BackendFailed(f"backend answered LOGIN with: {describe(rest)}"))

    def _after_capabilities(self, out: list[Event]) -> None:
        caps = self._caps
        assert caps is not None
        if caps.login_disabled:
            self._fail(out, "backend refuses LOGIN on this connection (LOGINDISABLED): "
                            "enable TLS to the backend or allow plaintext logins there")
        elif self._send_id and caps.id:
            command = self._command(b"ID (" + self._id_args() + b")")
            self._step = _ID
            if self._login_waits_for_continuation():
                out.append(Send(command))
            else:
                # Pipelined: LOGIN goes in the same write, saving a round trip per
                # session; the ID's own tagged answer is then skipped (see _line).
                self._id_tag = self._tag
                self._login(out, command)
        else:
            self._login(out, b"")

    def _id_args(self) -> bytes:
        client_ip, client_port, local_ip, local_port, client_ua = self._id_fields
        via = client_ua + ",carbotui" if client_ua else "carbotui"
        return (b'"X-ORIGINATING-IP" %s "X-ORIGINATING-PORT" "%d" '
                b'"X-CONNECTED-IP" %s "X-CONNECTED-PORT" "%d" "X-VIA" %s' % (
                    _id_value(client_ip), client_port, _id_value(local_ip), local_port,
                    _id_value(via)))

    def _literal_plus(self, value: bytes) -> bool:
        caps = self._caps               # read after CAPABILITY: always set
        if caps is None:
            return False
        return caps.literal_plus or (caps.literal_minus and len(value) <= _LITERAL_MINUS_MAX)

    def _login_waits_for_continuation(self) -> bool:
        user, password = self._username, self._password
        return ((user.translate(_PRINTABLE_OR_QMARK) != user and not self._literal_plus(user))
                or (password.translate(_PRINTABLE_OR_QMARK) != password
                    and not self._literal_plus(password)))

    def _login(self, out: list[Event], before: bytes) -> None:
        """LOGIN with quoted strings where possible, else literals; a
        synchronising literal splits the command where we must wait for "+".
        ``before``: bytes that go in the same write, ahead of it (a pipelined ID)."""
        self._tags += 1
        self._tag = b"A%d" % self._tags
        user, password = self._username, self._password
        if (user.translate(_PRINTABLE_OR_QMARK) == user
                and password.translate(_PRINTABLE_OR_QMARK) == password):
            # Both printable ASCII (the usual login): two quoted strings, one write.
            out.append(Send(b"%s%s LOGIN %s %s\r\n" % (before, self._tag, _quote(user),
                                                       _quote(password))))
            self._login_chunks = []
            self._step = _LOGIN
            return
        chunks: list[bytes] = []
        current = before + self._tag + b" LOGIN"
        for value in (user, password):
            if value.translate(_PRINTABLE_OR_QMARK) == value:     # printable ASCII
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
