"""POP3 pre-auth state machines, sans-IO: bytes in, events out.

``Pop3ClientSide`` plays the POP3 server to a mail client until it has
credentials (CAPA, USER/PASS, AUTH PLAIN, STLS, NOOP, QUIT).
``Pop3BackendLogin`` plays the client to a mailbox server: greeting, CAPA,
XOIP or XCLIENT with the client's address, then AUTH PLAIN or USER/PASS.

POP3 is one line per command (RFC 1939, 2449, 2595, 5034); there are no
literals, so framing is just the bounded line buffer.
"""
from __future__ import annotations

import enum
import re
from typing import ClassVar, Final

from carbotui.protocols.events import (
    Authenticate, LoginOK, LoginRejected, MailLimits, Send, StartTLS,
)
from carbotui.protocols.preauth import (
    AUTH_LINE, COMMAND, HANDED_OFF, WAIT_AUTH, WAIT_TLS, BackendLogin, ClientSide, describe,
)
from carbotui.protocols.sasl import (
    AuthDataError, AuthzidRefused, Event, LineTooLong, b64decode_strict, check_wire_safe,
    coalesce, decode_password, decode_plain, decode_username, encode_plain, safe_text,
)

__all__ = ["Pop3ClientSide", "Pop3BackendLogin"]

CRLF: Final = b"\r\n"
# preauth's states again, as Final names: compiled code reads them from C statics, not
# from the module's dictionary (three or four reads per command).
_COMMAND: Final = COMMAND
_AUTH_LINE: Final = AUTH_LINE
_WAIT_AUTH: Final = WAIT_AUTH
_HANDED_OFF: Final = HANDED_OFF
# Replies every session may get, made once. Events are not changed once made (events.py),
# so one Send serves every session: building one costs a Python-level __init__.
_OK_LINE: Final = Send(b"+OK" + CRLF)

_PRIVACY_REFUSAL: Final = (b"-ERR [SYS/PERM] Plaintext authentication disallowed on non-secure "
                    b"connections; use STLS first." + CRLF)


def _err(text: bytes) -> Send:
    return Send(b"-ERR " + text + CRLF)


class Pop3ClientSide(ClientSide):
    """The proxy as POP3 server, before login. See the module docstring."""

    TEMPORARY_CODE: ClassVar[bytes] = b"SYS/TEMP"
    FAILED_CODE: ClassVar[bytes] = b"AUTH"
    CLOSING: ClassVar[bytes] = b"-ERR"
    IDLE_TIMEOUT: ClassVar[bytes] = b"-ERR Disconnected for inactivity.\r\n"
    SHUTTING_DOWN: ClassVar[bytes] = b"-ERR Server shutting down\r\n"

    # Defaults at class level: a session sets them only when they change.
    _user: str | None = None               # from USER, waiting for PASS
    _skipping = False                      # dropping the rest of a line over max_line

    # ------------------------------------------------------------ public API

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The CAPA lines for the connection as it is now."""
        limits = self._limits
        caps = list(limits.pop3_capabilities)
        if self._privacy_required:
            # Offer no plaintext login before TLS (nginx's starttls-only variant).
            caps = [c for c in caps if c.split(" ", 1)[0].upper() != "USER"]
        elif limits.sasl_plain:
            caps.append("SASL PLAIN")
        if not self._tls and limits.starttls != "off":
            caps.append("STLS")
        return tuple(caps)

    @property
    def capability_line(self) -> str:
        """The CAPA lines joined by spaces (for display and logs)."""
        return " ".join(self.capabilities)

    def greeting(self) -> bytes:
        text = self._limits.pop3_greeting
        known = _GREETING_LINE
        if text is not known.text:      # the node's limits are shared: once per setting
            known.line = b"+OK " + safe_text(text).encode() + CRLF
            known.text = text
        return known.line

    def auth_succeeded(self, backend_response: bytes) -> tuple[list[Event], bytes]:
        """Pass the backend's reply (``+OK Logged in.``) to the client. Returns
        the events and the bytes the client pipelined after its login
        command, which the relay must pass on to the backend."""
        self._expect(_WAIT_AUTH, "auth_succeeded")
        buf = self._buf
        leftover = b""
        if len(buf):                    # a client that pipelined after its login
            leftover = buf.peek_all()
            buf.clear()
        self._state = _HANDED_OFF
        return [Send(backend_response + CRLF)], leftover

    def throttled(self, message: str) -> list[Event]:
        if self._state is _HANDED_OFF:
            raise RuntimeError("Pop3ClientSide.throttled() after auth_succeeded()")
        out: list[Event] = [_err(safe_text(message).encode())]
        self._close(out, "throttled")
        return coalesce(out)

    # ---------------------------------------------------------- machinery

    def _auth_failed_reply(self, text: bytes) -> Event:
        return _err(text)

    def _too_many_failures(self, out: list[Event]) -> None:
        self._close(out, "too many authentication failures")

    def _refuse_backlog(self, out: list[Event]) -> None:
        out.append(_err(b"Too much data sent during authentication."))
        self._close(out, "pipelined too much")

    def _forget_login(self) -> None:
        self._user = None

    def _run(self) -> list[Event]:
        out: list[Event] = []
        limit = self._limits.max_line
        while True:
            state = self._state
            if state is not _COMMAND and state is not _AUTH_LINE:
                break
            if self._skipping:
                if self._buf.skip_line() is None:
                    break
                self._skipping = False
                out.append(_err(b"Line too long."))
                continue
            try:
                line = self._buf.next_line(limit)
            except LineTooLong:
                if state is _AUTH_LINE:
                    out.append(_err(b"Line too long."))
                    self._close(out, "line too long")
                    break
                # RFC 2449 section 4 asks for 255 octets; a longer command is refused
                # with -ERR once its line has passed, and the session goes on.
                self._skipping = True
                continue
            if line is None:
                break
            if state is _AUTH_LINE:
                self._auth_line(line, out)
            else:
                self._command(line, out)
        return out

    def _command(self, line: bytes, out: list[Event]) -> None:
        # Native operations only (bytes.find, .partition and .upper are Python-level
        # method calls in compiled code): `int in bytes` is a memchr; every verb is four
        # letters, so a verb is four bytes followed by the end of the line or a space (as
        # line.partition(b" ") splits it), and its _key() names it in any case.
        if 0 in line:
            out.append(_err(b"NUL byte in command."))
            return
        verb = 0
        arg: bytes | None = None
        n = len(line)
        if n == 4 or (n > 4 and line[4] == 0x20):
            verb = ((line[0] | 0x20) << 24 | (line[1] | 0x20) << 16 | (line[2] | 0x20) << 8
                    | (line[3] | 0x20))
            if n > 4:
                arg = line[5:]
        if verb == _VERB_USER:
            self._do_user(arg, out)
        elif verb == _VERB_PASS:
            self._do_pass(arg, out)
        elif verb == _VERB_CAPA:
            self._do_capa(arg, out)
        elif verb == _VERB_QUIT:
            self._do_quit(arg, out)
        elif verb == _VERB_NOOP:
            self._do_noop(arg, out)
        elif verb == _VERB_STLS:
            self._do_stls(arg, out)
        elif verb == _VERB_AUTH:
            self._do_auth(arg, out)
        else:
            out.append(_err(b"Unknown command."))

    # ----------------------------------------------------------- commands
    # Each gets the argument after the first space (None if no space).

    def _no_args(self, arg: bytes | None, out: list[Event]) -> bool:
        if arg is not None and arg.strip(b" "):
            out.append(_err(b"Unexpected argument."))
            return False
        return True

    def _do_capa(self, arg: bytes | None, out: list[Event]) -> None:
        if self._no_args(arg, out):
            lines = [b"+OK Capability list follows"]
            lines += [safe_text(c).encode() for c in self.capabilities]
            out.append(Send(CRLF.join(lines) + CRLF + b"." + CRLF))

    def _do_noop(self, arg: bytes | None, out: list[Event]) -> None:
        if self._no_args(arg, out):
            out.append(_OK_LINE)

    def _do_quit(self, arg: bytes | None, out: list[Event]) -> None:
        if self._no_args(arg, out):
            out.append(Send(b"+OK Logging out" + CRLF))
            self._close(out, "client logged out")

    def _do_stls(self, arg: bytes | None, out: list[Event]) -> None:
        if not self._no_args(arg, out):
            return
        if self._tls:
            out.append(_err(b"TLS is already active."))
        elif self._limits.starttls == "off":
            out.append(_err(b"STLS is not available."))
        else:
            out.append(Send(b"+OK Begin TLS negotiation" + CRLF))
            out.append(StartTLS())
            # Bytes that came in plaintext after STLS must not be run as if
            # they had come over TLS (CVE-2011-0411-style injection); a
            # USER given before TLS is forgotten too (RFC 2595 section 4).
            self._buf.clear()
            self._user = None
            self._state = WAIT_TLS

    def _do_user(self, arg: bytes | None, out: list[Event]) -> None:
        if self._privacy_required:
            out.append(Send(_PRIVACY_REFUSAL))
            return
        try:
            self._user = decode_username(arg or b"")
        except AuthDataError as e:
            self._user = None
            out.append(_err(str(e).encode() + b"."))
            return
        out.append(_OK_LINE)

    def _do_pass(self, arg: bytes | None, out: list[Event]) -> None:
        if self._privacy_required:
            out.append(Send(_PRIVACY_REFUSAL))
            return
        user, self._user = self._user, None     # a new try needs a new USER
        if user is None:
            out.append(_err(b"Send USER first."))
            return
        if not arg:
            out.append(_err(b"PASS expects a password."))
            return
        try:
            # The whole rest of the line: passwords may contain spaces.
            password = decode_password(arg)
        except AuthDataError as e:
            out.append(_err(str(e).encode() + b"."))
            return
        # positionally (username, password, authzid, mechanism): keywords to the events'
        # Python-level __init__ cost a dict per login
        self._begin_auth(Authenticate(user, password, "", "USER"), out)

    def _do_auth(self, arg: bytes | None, out: list[Event]) -> None:
        if self._privacy_required:
            out.append(Send(_PRIVACY_REFUSAL))
            return
        sasl = self._limits.sasl_plain
        if not arg:
            # AUTH without a mechanism lists them (used by Outlook and others).
            out.append(Send(b"+OK" + CRLF + (b"PLAIN" + CRLF if sasl else b"") + b"." + CRLF))
            return
        mechanism, has_response, response = arg.partition(b" ")
        if mechanism.upper() != b"PLAIN" or not sasl:
            out.append(_err(b"Unsupported authentication mechanism."))
            return
        if has_response and response:                  # initial response (RFC 5034)
            self._plain(b"" if response == b"=" else response, out)
            return
        out.append(Send(b"+ " + CRLF))
        self._state = _AUTH_LINE

    def _auth_line(self, line: bytes, out: list[Event]) -> None:
        self._state = _COMMAND
        if line == b"*":
            out.append(_err(b"Authentication cancelled."))
            return
        self._plain(line, out)

    def _plain(self, b64: bytes, out: list[Event]) -> None:
        try:
            creds = decode_plain(b64decode_strict(b64))
        except AuthzidRefused as e:             # RFC 4616 §2, RFC 3206
            out.append(_err(b"[AUTH] " + str(e).encode() + b"."))
            return
        except AuthDataError as err:            # not e: mypyc would type it as the clause above
            out.append(_err(str(err).encode() + b"."))
            return
        self._begin_auth(Authenticate(creds.username, creds.password, creds.authzid,
                                      "PLAIN"), out)


class _Greeting:
    """The greeting line for the last greeting text (a compiled class's attributes)."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.line = b""


_GREETING_LINE: Final = _Greeting()

# The pre-auth verbs by _key(): the four bytes with 0x20 set in each, which folds the case
# of a letter (RFC 1939: keywords are case-insensitive) and of nothing else that could
# match: b | 0x20 is a lower-case letter only when b is that letter in either case.
def _key(verb: bytes) -> int:
    return (verb[0] | 0x20) << 24 | (verb[1] | 0x20) << 16 | (verb[2] | 0x20) << 8 \
        | (verb[3] | 0x20)


_VERB_CAPA: Final = _key(b"CAPA")
_VERB_NOOP: Final = _key(b"NOOP")
_VERB_QUIT: Final = _key(b"QUIT")
_VERB_STLS: Final = _key(b"STLS")
_VERB_USER: Final = _key(b"USER")
_VERB_PASS: Final = _key(b"PASS")
_VERB_AUTH: Final = _key(b"AUTH")


# ----------------------------------------------------------- backend side

_MAX_CAPA_LINES: Final = 100
# RFC 5034 section 4: an AUTH command with its initial response must fit in
# 255 octets; longer responses go after a "+ " continuation instead.
_MAX_AUTH_LINE: Final = 255
_RESP_CODE_RE: Final = re.compile(rb"-ERR \[([^\]]+)\]", re.IGNORECASE)
# Refusals after which a later retry may succeed (RFC 2449, RFC 3206).
_TEMPORARY_CODES: Final = frozenset({b"SYS/TEMP", b"IN-USE", b"LOGIN-DELAY"})


class _Step(enum.Enum):
    GREETING = enum.auto()
    CAPA = enum.auto()          # sent CAPA, want +OK/-ERR
    CAPA_LIST = enum.auto()     # reading the capability lines up to "."
    XOIP = enum.auto()          # sent XOIP/XCLIENT, want any status
    AUTH = enum.auto()          # sent AUTH PLAIN
    USER = enum.auto()
    PASS = enum.auto()
    DONE = enum.auto()


# Module constants rather than attributes of _Step: see carbotui/protocols/preauth.py (Enum
# cost); Final, so that compiled code reads C statics, not the module's dictionary.
_GREETING: Final = _Step.GREETING
_CAPA_STEP: Final = _Step.CAPA
_CAPA_LIST: Final = _Step.CAPA_LIST
_XOIP: Final = _Step.XOIP
_AUTH: Final = _Step.AUTH
_USER_STEP: Final = _Step.USER
_PASS_STEP: Final = _Step.PASS
_DONE: Final = _Step.DONE
_CAPA_COMMAND: Final = Send(b"CAPA" + CRLF)


def _status(line: bytes) -> bytes:
    """+OK, -ERR, + (continuation) or b"" for anything else: the first word, up to the
    first space (as line.split(b" ", 1)[0]), by native prefix tests."""
    if line.startswith(b"+OK"):
        return b"+OK" if len(line) == 3 or line[3] == 0x20 else b""
    if line.startswith(b"-ERR"):
        return b"-ERR" if len(line) == 4 or line[4] == 0x20 else b""
    if line.startswith(b"+"):
        return b"+" if len(line) == 1 or line[1] == 0x20 else b""
    return b""


def _address(ip: str) -> bytes:
    # Only characters an IPv4/IPv6 address can have: the value is put on a
    # command line, so nothing else may get through.
    return re.sub(r"[^0-9A-Fa-f.:]", "", ip).encode("ascii")


class Pop3BackendLogin(BackendLogin):
    """The proxy logging in to a POP3 mailbox server with the client's
    credentials. ``feed`` returns Sends for the server followed, once, by
    LoginOK, LoginRejected or BackendFailed."""

    GREETING: ClassVar[enum.Enum] = _GREETING
    DONE: ClassVar[enum.Enum] = _DONE

    def __init__(self, username: str, password: str, client_ip: str, client_port: int,
                 local_ip: str = "", local_port: int = 0, send_xoip: bool = True,
                 capabilities: dict[bytes, list[bytes]] | None = None):
        """``capabilities``: this server's CAPA answer from an earlier login, if the
        glue remembers one; the login then skips CAPA (one round trip less).
        Positional or keyword: compiled, each keyword costs the constructor ~700
        instructions of matching (a string made from C and a dictionary lookup)."""
        check_wire_safe(username, password)
        self._username = username
        self._password = password
        self._client_ip = client_ip
        self._client_port = client_port
        # local_ip/local_port: accepted for symmetry with ImapBackendLogin;
        # XOIP/XCLIENT as sent here do not carry them.
        self._send_xoip = send_xoip
        BackendLogin.__init__(self)
        self._caps: dict[bytes, list[bytes]] = {}
        self._auth_response: bytes | None = None   # SASL response waiting for "+ "
        self.remembered = capabilities is not None
        if capabilities is not None:
            self._caps = capabilities
        # The CAPA answer this login read from the server (None: not asked), for the
        # glue to remember.
        self.learned: dict[bytes, list[bytes]] | None = None

    # ------------------------------------------------------------------

    def _line(self, line: bytes, out: list[Event]) -> None:
        step = self._step
        if step is _CAPA_LIST:
            if line == b".":
                self.learned = self._caps
                self._after_capa(out)
            elif len(self._caps) < _MAX_CAPA_LINES:
                words = (line[1:] if line.startswith(b"..") else line).upper().split()
                if words:
                    self._caps[words[0]] = words[1:]
            return
        status = _status(line)
        if step is _GREETING:
            if status != b"+OK":
                self._fail(out, f"unexpected greeting from backend: {describe(line)}")
                return
            if self.remembered:
                self._after_capa(out)
                return
            out.append(_CAPA_COMMAND)
            self._step = _CAPA_STEP
        elif step is _CAPA_STEP:
            if status == b"+OK":
                self._step = _CAPA_LIST
            elif status == b"-ERR":             # a server without CAPA: plain USER/PASS
                self.learned = self._caps
                self._after_capa(out)
            else:
                self._fail(out, f"unexpected reply to CAPA: {describe(line)}")
        elif step is _XOIP:
            # Either answer is fine: the IP is informational for the backend.
            if status in (b"+OK", b"-ERR"):
                self._authenticate(out)
            else:
                self._fail(out, f"unexpected reply to XOIP/XCLIENT: {describe(line)}")
        elif step is _AUTH and status == b"+" and self._auth_response is not None:
            out.append(Send(self._auth_response + CRLF))
            self._auth_response = None
        elif step is _USER_STEP and status == b"+OK":
            out.append(Send(b"PASS " + self._password.encode("utf-8") + CRLF))
            self._step = _PASS_STEP
        elif status == b"+OK":
            self._step = _DONE
            out.append(LoginOK(line))
        elif status == b"-ERR":
            self._step = _DONE
            code = _RESP_CODE_RE.match(line)
            temporary = code is not None and code.group(1).upper() in _TEMPORARY_CODES
            out.append(LoginRejected(line, temporary=temporary))
        else:
            self._fail(out, f"unexpected reply to login: {describe(line)}")

    def _after_capa(self, out: list[Event]) -> None:
        caps = self._caps
        if self._send_xoip and b"XOIP" in caps:
            out.append(Send(b"XOIP " + _address(self._client_ip) + CRLF))
            self._step = _XOIP
        elif self._send_xoip and b"XCLIENT" in caps:
            out.append(Send(b"XCLIENT ADDR=%s PORT=%d" % (
                _address(self._client_ip), self._client_port) + CRLF))
            self._step = _XOIP
        else:
            self._authenticate(out)

    def _authenticate(self, out: list[Event]) -> None:
        if b"PLAIN" in self._caps.get(b"SASL", ()):
            response = encode_plain(self._username, self._password)
            command = b"AUTH PLAIN " + response + CRLF
            if len(command) > _MAX_AUTH_LINE:
                out.append(Send(b"AUTH PLAIN" + CRLF))
                self._auth_response = response
            else:
                out.append(Send(command))
            self._step = _AUTH
        else:
            out.append(Send(b"USER " + self._username.encode("utf-8") + CRLF))
            self._step = _USER_STEP
