"""What the IMAP and POP3 machines share, sans-IO.

``ClientSide``: the pre-auth states, the line buffer, the STARTTLS policy, the bound on
what a client may pipeline while its login is routed, and the count of failed logins.
Each protocol (imap.py, pop3.py) supplies its commands and its words: ``_run`` (parse
what is buffered), ``_auth_failed_reply``, ``_too_many_failures``,
``_refuse_backlog`` and ``_forget_login``.

``BackendLogin``: the receive buffer of a login to a mailbox server, read a line at a
time, its failure, and what came after the final reply. Each protocol supplies ``_line``
and its steps.
"""
from __future__ import annotations

import enum
from typing import ClassVar, Final

from carbotui.protocols.events import Authenticate, BackendFailed, Close, MailLimits
from carbotui.protocols.sasl import Event, LineBuffer, LineTooLong, coalesce, safe_text

STARTTLS_MODES: Final = ("only", "on", "off")
MAX_BACKEND_LINE: Final = 64 * 1024


def command_table(*verbs: str) -> dict[str, str]:
    """A machine's pre-auth verbs and their handlers: VERB -> "_do_verb"; anything
    else is refused."""
    return {verb: "_do_" + verb.lower() for verb in verbs}


def describe(line: bytes) -> str:
    """A backend's line, printable and short, for a BackendFailed reason."""
    return safe_text(line.decode("utf-8", "replace"), 120).strip()


class State(enum.Enum):
    COMMAND = enum.auto()       # reading commands
    AUTH_LINE = enum.auto()     # sent "+ " for a SASL exchange; want the response line
    WAIT_AUTH = enum.auto()     # Authenticate emitted; waiting for auth_failed/auth_succeeded
    WAIT_TLS = enum.auto()      # StartTLS emitted; waiting for tls_started
    CLOSED = enum.auto()        # Close emitted; later input is ignored
    HANDED_OFF = enum.auto()    # auth_succeeded returned; the relay owns the connection


# The states as module constants: on Python 3.11 every attribute access on an Enum class
# goes through EnumType.__getattr__'s slow path (~120 ns), dozens of times per login.
# Final: mypyc keeps them in C statics, not a globals-dict lookup per use.
COMMAND: Final = State.COMMAND
AUTH_LINE: Final = State.AUTH_LINE
WAIT_AUTH: Final = State.WAIT_AUTH
WAIT_TLS: Final = State.WAIT_TLS
CLOSED: Final = State.CLOSED
HANDED_OFF: Final = State.HANDED_OFF


class ClientSide:
    """The proxy as mail server before login; subclasses speak the protocol."""

    # Response codes of a refused login (RFC 5530 for IMAP, RFC 3206 for POP3).
    TEMPORARY_CODE: ClassVar[bytes] = b""
    FAILED_CODE: ClassVar[bytes] = b""
    # What the glue writes before it closes a session itself, whole lines: the protocol
    # gives the word that starts a closing line, IDLE_TIMEOUT (no login within
    # preauth_timeout) and SHUTTING_DOWN (the worker is stopping); the refusals of a new
    # connection (the worker at max_connections, the address at max_connections_per_ip)
    # are the same words in both, after TEMPORARY_CODE.
    CLOSING: ClassVar[bytes] = b""
    IDLE_TIMEOUT: ClassVar[bytes] = b""
    SHUTTING_DOWN: ClassVar[bytes] = b""
    BUSY: ClassVar[bytes] = b""
    TOO_MANY_FROM_ADDRESS: ClassVar[bytes] = b""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        refusal = b"%s [%s] " % (cls.CLOSING, cls.TEMPORARY_CODE)
        cls.BUSY = refusal + b"Server busy, try again later\r\n"
        cls.TOO_MANY_FROM_ADDRESS = refusal + b"Too many connections from your address\r\n"

    def __init__(self, limits: MailLimits, *, tls: bool):
        if limits.starttls not in STARTTLS_MODES:
            raise ValueError(f"starttls mode must be one of only|on|off, not {limits.starttls!r}")
        self._limits = limits
        self._tls = tls
        self._buf = LineBuffer()
        self._state = COMMAND
        self._failures = 0

    @property
    def tls(self) -> bool:
        return self._tls

    def feed(self, data: bytes) -> list[Event]:
        state = self._state
        if state is HANDED_OFF:
            raise RuntimeError(f"{type(self).__name__}.feed() after auth_succeeded()")
        if state is CLOSED or state is WAIT_TLS:
            # Plaintext that arrives between STARTTLS and the handshake is an
            # injection attempt or a glue bug; it must never be executed.
            return []
        self._buf.append(data)
        if state is WAIT_AUTH:
            out: list[Event] = []
            self._check_backlog(out)
            return out
        return coalesce(self._run())

    def tls_started(self) -> list[Event]:
        self._expect(WAIT_TLS, "tls_started")
        self._tls = True
        self._state = COMMAND
        return []

    def auth_failed(self, *, temporary: bool, text: str | None = None) -> list[Event]:
        self._expect(WAIT_AUTH, "auth_failed")
        if temporary:
            code, human = self.TEMPORARY_CODE, "Temporary failure, try again later."
        else:
            # Only real refusals count: a backend outage is not the user's fault.
            self._failures += 1
            code, human = self.FAILED_CODE, "Authentication failed."
        if text:
            human = safe_text(text) or human
        out: list[Event] = [self._auth_failed_reply(b"[%s] %s" % (code, human.encode()))]
        limit = self._limits.max_auth_failures
        if not temporary and 0 < limit <= self._failures:
            self._too_many_failures(out)
            return coalesce(out)
        self._state = COMMAND
        out += self._run()          # commands the client pipelined meanwhile
        return coalesce(out)

    # ---------------------------------------------------------- machinery

    @property
    def _privacy_required(self) -> bool:
        return not self._tls and self._limits.starttls == "only"

    def _expect(self, state: State, method: str) -> None:
        if self._state is not state:
            raise RuntimeError(
                f"{type(self).__name__}.{method}() called in state {self._state.name}")

    def _check_backlog(self, out: list[Event]) -> None:
        # While the login is routed we keep what the client pipelines, but
        # only about one command's worth.
        if len(self._buf) > self._limits.max_line + self._limits.max_literal:
            self._refuse_backlog(out)

    def _begin_auth(self, event: Authenticate, out: list[Event]) -> None:
        """Hand the login to the glue (unless the client pipelined too much)."""
        self._check_backlog(out)
        if self._state is CLOSED:
            return
        self._state = WAIT_AUTH
        out.append(event)

    def _close(self, out: list[Event], reason: str) -> None:
        """End the session: Close, and later input is ignored."""
        out.append(Close(reason))
        self._state = CLOSED
        self._forget_login()
        self._buf.clear()

    # ---------------------------------------------------------- protocol's part

    def _run(self) -> list[Event]:
        raise NotImplementedError

    def _auth_failed_reply(self, text: bytes) -> Event:
        """The refusal of the pending login, ``text`` being "[CODE] human text"."""
        raise NotImplementedError

    def _too_many_failures(self, out: list[Event]) -> None:
        raise NotImplementedError

    def _refuse_backlog(self, out: list[Event]) -> None:
        raise NotImplementedError

    def _forget_login(self) -> None:
        """Drop what the protocol holds of a login under way (the session is closing)."""
        raise NotImplementedError


class BackendLogin:
    """The proxy logging in to a mailbox server; subclasses speak the protocol and set
    ``GREETING``/``DONE`` to their first and last steps."""

    GREETING: ClassVar[enum.Enum]
    DONE: ClassVar[enum.Enum]

    def __init__(self) -> None:
        self._buf = LineBuffer()
        self._step = self.GREETING
        self._skip = 0          # bytes to drop before the next line (an IMAP literal's)

    def __repr__(self) -> str:          # never the credentials
        return f"<{type(self).__name__} step={self._step.name}>"

    def leftover(self) -> bytes:
        """Bytes received after the final reply (normally none)."""
        return self._buf.peek_all()

    def feed(self, data: bytes) -> list[Event]:
        """Sends for the server followed, once, by LoginOK, LoginRejected or BackendFailed."""
        done = self.DONE
        if self._step is done:
            raise RuntimeError(f"{type(self).__name__}.feed() after the login finished")
        buf = self._buf
        buf.append(data)
        out: list[Event] = []
        while self._step is not done:
            if self._skip:
                self._skip -= buf.discard(self._skip)
                if self._skip:
                    break
            try:
                line = buf.next_line(MAX_BACKEND_LINE)
            except LineTooLong:
                self._fail(out, "backend sent a line longer than 64 KiB")
                break
            if line is None:
                break
            self._line(line, out)
        return coalesce(out)

    def _line(self, line: bytes, out: list[Event]) -> None:
        """One line from the server, without its CRLF."""
        raise NotImplementedError

    def _fail(self, out: list[Event], reason: str) -> None:
        out.append(BackendFailed(reason))
        self._step = self.DONE
