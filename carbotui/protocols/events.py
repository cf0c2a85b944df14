"""Events exchanged between the sans-IO protocol machines and the asyncio glue.

A machine takes bytes (``feed``) and returns a list of these events; the glue
carries them out in order. Nothing here does I/O. Events are not changed once made,
but are not frozen dataclasses either: a frozen __init__ sets each field through
object.__setattr__, and a login makes several of them. Each writes its own __init__
(``init=False``): the one dataclasses generates is interpreted Python even in the mypyc
build (~1,200 instructions per event, callgrind), a written one is compiled (~150).
The dataclass still gives __eq__ and __repr__ (never the password).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The machines' settings ([mail] starttls, max_line…) are declared with the other settings;
# re-exported here, as the machines take them next to these events.
from carbotui.core.settings import MailLimits  # noqa: F401


@dataclass(slots=True, init=False)
class Send:
    """Write these bytes to the peer the machine talks to."""
    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True)
class StartTLS:
    """Upgrade the client connection to TLS now (the OK/+OK was already sent).

    The glue calls ``machine.tls_started()`` once the handshake is done.
    """


@dataclass(slots=True, init=False)
class Authenticate:
    """The client presented credentials; the glue routes and logs in upstream.

    Until the glue answers with ``auth_failed``/``auth_succeeded`` the machine
    parses nothing more (later bytes are kept, bounded, for after the answer).
    """
    username: str
    password: str = field(repr=False)
    authzid: str = ""
    mechanism: str = "LOGIN"          # LOGIN | PLAIN | USER

    def __init__(self, username: str, password: str, authzid: str = "",
                 mechanism: str = "LOGIN") -> None:
        self.username = username
        self.password = password
        self.authzid = authzid
        self.mechanism = mechanism


@dataclass(slots=True, init=False)
class ClientId:
    """IMAP ID fields the client sent (lower-cased keys), for the audit ``ua``."""
    fields: dict[str, str | None]

    def __init__(self, fields: dict[str, str | None]) -> None:
        self.fields = fields


@dataclass(slots=True, init=False)
class Close:
    """Close the connection after the preceding Sends are flushed."""
    reason: str

    def __init__(self, reason: str) -> None:
        self.reason = reason


# Backend-side (proxy -> mailbox server) login results.

@dataclass(slots=True, init=False)
class LoginOK:
    """The mailbox server accepted the login. ``response`` is its reply text
    without tag and CRLF (IMAP: ``OK [CAPABILITY ...] Logged in``; POP3:
    ``+OK Logged in.``)."""
    response: bytes

    def __init__(self, response: bytes) -> None:
        self.response = response


@dataclass(slots=True, init=False)
class LoginRejected:
    """The mailbox server refused the login. ``temporary`` is true for
    [UNAVAILABLE]/[SYS/TEMP]-style refusals, where retrying later may work."""
    response: bytes
    temporary: bool = False

    def __init__(self, response: bytes, temporary: bool = False) -> None:
        self.response = response
        self.temporary = temporary


@dataclass(slots=True, init=False)
class BackendFailed:
    """The mailbox server spoke something we cannot use (bad greeting, BYE,
    protocol error). The glue may try another connection."""
    reason: str

    def __init__(self, reason: str) -> None:
        self.reason = reason
