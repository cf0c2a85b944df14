"""Events exchanged between the sans-IO protocol machines and the asyncio glue.

A machine takes bytes (``feed``) and returns a list of these events; the glue
carries them out in order. Nothing here does I/O. Events are not changed once made,
but are not frozen dataclasses either: a frozen __init__ sets each field through
object.__setattr__, and a login makes several of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Send:
    """Write these bytes to the peer the machine talks to."""
    data: bytes


@dataclass(slots=True)
class StartTLS:
    """Upgrade the client connection to TLS now (the OK/+OK was already sent).

    The glue calls ``machine.tls_started()`` once the handshake is done.
    """


@dataclass(slots=True)
class Authenticate:
    """The client presented credentials; the glue routes and logs in upstream.

    Until the glue answers with ``auth_failed``/``auth_succeeded`` the machine
    parses nothing more (later bytes are kept, bounded, for after the answer).
    """
    username: str
    password: str = field(repr=False)
    authzid: str = ""
    mechanism: str = "LOGIN"          # LOGIN | PLAIN | USER


@dataclass(slots=True)
class ClientId:
    """IMAP ID fields the client sent (lower-cased keys), for the audit ``ua``."""
    fields: dict[str, str | None]


@dataclass(slots=True)
class Close:
    """Close the connection after the preceding Sends are flushed."""
    reason: str


# Backend-side (proxy -> mailbox server) login results.

@dataclass(slots=True)
class LoginOK:
    """The mailbox server accepted the login. ``response`` is its reply text
    without tag and CRLF (IMAP: ``OK [CAPABILITY ...] Logged in``; POP3:
    ``+OK Logged in.``)."""
    response: bytes


@dataclass(slots=True)
class LoginRejected:
    """The mailbox server refused the login. ``temporary`` is true for
    [UNAVAILABLE]/[SYS/TEMP]-style refusals, where retrying later may work."""
    response: bytes
    temporary: bool = False


@dataclass(slots=True)
class BackendFailed:
    """The mailbox server spoke something we cannot use (bad greeting, BYE,
    protocol error). The glue may try another connection."""
    reason: str


@dataclass(frozen=True, slots=True)
class MailLimits:
    """Pre-auth behaviour shared by the IMAP and POP3 client-side machines."""
    starttls: str = "only"            # only | on | off (ignored when already TLS)
    max_line: int = 65536
    max_literal: int = 65536
    max_auth_failures: int = 3
    sasl_plain: bool = True
    imap_capabilities: tuple[str, ...] = (
        "IMAP4rev1", "ID", "LITERAL+", "SASL-IR", "IDLE", "NAMESPACE", "ENABLE",
    )
    pop3_capabilities: tuple[str, ...] = ("TOP", "USER", "UIDL", "PIPELINING", "RESP-CODES",
                                          "AUTH-RESP-CODE")
    imap_greeting: str = "IMAP4rev1 proxy ready"
    pop3_greeting: str = "POP3 proxy ready"
    imap_id: tuple[tuple[str, str], ...] = (("name", "carbotui"),)
