"""access.log and sessions.log of a worker: one call per finished web request and per
ended mail session, each one line (carbotui/core/logformat.py) in one ``write()`` on an
O_APPEND descriptor (carbotui/core/audit.AuditLog), shared by every worker of the node.

The glue calls ``web_request`` when a request got its answer (or none) and
``mail_session_ended`` when a relayed mail session ends; both also count what the metrics
exporter reads (carbotui/proxy/stats.py). SIGUSR1 (carbotui/proxy/__main__.py) makes the
worker ``reopen()`` audit.log, access.log and sessions.log, as nginx's ``kill -USR1``
after logrotate moved them.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

from carbotui.core import logformat
from carbotui.core.audit import AuditLog
from carbotui.protocols import http11

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices
    from carbotui.proxy.stats import Stats

log: Final = logging.getLogger("carbotui.proxy.logs")

NO_RESPONSE: Final = 499          # nginx's code for a client that went away before the answer
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
_LOGGED = frozenset({b"host", b"referer", b"user-agent", b"authorization"})
# What a header name, as sent, is to the access log: _HOST, _REFERER, _AGENT, _AUTH (the
# four of _LOGGED, case-insensitively) or _OTHER. Names seen before are a dict lookup
# instead of a bytes.lower call per header (a method call in the compiled build); at most
# _NAMES_MAX names of at most 64 bytes (emptied when full).
_OTHER: Final = 0
_HOST: Final = 1
_REFERER: Final = 2
_AGENT: Final = 3
_AUTH: Final = 4
_KINDS: Final = {b"host": _HOST, b"referer": _REFERER, b"user-agent": _AGENT,
                 b"authorization": _AUTH}
_NAMES: Final[dict[bytes, int]] = {}
_NAMES_MAX: Final = 4096


def _name_kind(name: bytes) -> int:
    """_KINDS of ``name.lower()`` (_OTHER for any other name), remembered."""
    kind = _NAMES.get(name)
    if kind is None:
        kind = _KINDS.get(name.lower(), _OTHER)
        if len(name) <= 64:
            if len(_NAMES) >= _NAMES_MAX:
                _NAMES.clear()
            _NAMES[name] = kind
    return kind


def status_class(status: int) -> str:
    return STATUS_CLASSES[status // 100 - 1] if 100 <= status < 600 else "other"


class NodeLogs:
    services: Any
    stats: Stats
    name: str

    def __init__(self, services: Any):     # SessionServices
        settings = services.settings
        self.services = services          # (Any: a test's stand-in will do)
        # what each line reads of the worker, here: one native load each (neither changes)
        self.stats = services.stats
        self.name = services.name         # proxy_NN
        # As nginx's: a new file only on SIGUSR1 (no stat of the path per request).
        # audit.log also follows a rotation by itself within a second (auditwatch).
        self.access = AuditLog(settings.access_log, follow=False)
        self.sessions = AuditLog(settings.sessions_log, follow=False)

    def reopen(self) -> None:
        """SIGUSR1: every log file this worker appends to, opened again by name."""
        for f in (self.services.audit, self.access, self.sessions):
            if f is not None:
                f.reopen()
        log.info("log files reopened (SIGUSR1)")

    def close(self) -> None:
        self.access.close()
        self.sessions.close()

    # -- web ------------------------------------------------------------------
    def web_request(self, session: Any, req: http11.Request | None, status: int,
                    bytes_sent: int, upstream: Any) -> None:
        """One answered request of a WebSession (``req`` None: no head could be parsed;
        ``status`` 0: nothing was answered; ``upstream``: the Upstream it went to)."""
        self.web_line(session.kind, session.client_ip, session.client_port, session.scheme,
                      session.local_ip, session.local_port, req, status, bytes_sent, upstream)

    def web_line(self, kind: str, client_ip: str, client_port: int, scheme: str,
                 local_ip: str, local_port: int, req: http11.Request | None, status: int,
                 bytes_sent: int, upstream: Any) -> None:
        """web_request with the session's fields as values (WebSession reads them
        natively; here each would be a Python attribute lookup)."""
        status = status or NO_RESPONSE
        self.stats.web_responses[
            kind, upstream.name if upstream is not None else "-", status_class(status)] += 1
        host = referer = agent = user = b""
        if req is None:
            method: bytes | None = None
            target = version = b""
        else:
            method, target, version = req.method, req.target, req.version
            # the first of each, as get_header gives it, in one pass over the headers
            authorization: bytes | None = None
            seen = 0                    # bit 1 << field: that header was met
            for key, value in req.headers:
                field = _name_kind(key)
                if field == _OTHER:
                    continue
                bit = 1 << field
                if seen & bit:
                    continue
                seen |= bit
                if field == _HOST:
                    host = value
                elif field == _REFERER:
                    referer = value
                elif field == _AGENT:
                    agent = value
                else:
                    authorization = value
            if authorization is not None:
                user = logformat.basic_user(authorization)
        # positionally, in access_line's order: timestamp, client_ip, client_port,
        # remote_user, method, scheme, host, target, version, status, bytes_sent, referer,
        # user_agent, upstream, server_ip, server_port (keywords cost the compiled
        # function ~1,500 instructions to match)
        self.access.write_line(logformat.access_line(
            time.time(), client_ip, client_port, user, method, scheme,
            host or local_ip.encode(), target, version, status, bytes_sent, referer, agent,
            f"{upstream.address}:{upstream.port}" if upstream is not None else "",
            local_ip, local_port))

    # -- mail -----------------------------------------------------------------
    def mail_session_ended(self, session: Any, reason: str, logged_out: bool) -> None:
        """A relayed (logged-in) MailSession ended; ``reason`` is Splice.close's."""
        self.mail_line(session.kind, session.client_ip, session.client_port, session.account,
                       session.server, session.started, session.bytes_in, session.bytes_out,
                       reason, logged_out, session.id)

    def mail_line(self, kind: str, client_ip: str, client_port: int, account: str,
                  server: str, started: float, bytes_in: int, bytes_out: int, reason: str,
                  logged_out: bool, session_id: int) -> None:
        """mail_session_ended with the session's fields as values (MailSession reads them
        natively; here each would be a Python attribute lookup)."""
        word = logformat.end_reason(reason, logged_out)
        self.stats.sessions_ended[kind, word] += 1
        now = time.time()
        # positionally, in session_line's order: timestamp, protocol, client_ip,
        # client_port, account, server, duration, bytes_in, bytes_out, reason, worker,
        # session (keywords cost the compiled function ~1,000 instructions to match)
        self.sessions.write_line(logformat.session_line(
            now, kind, client_ip, client_port, account, server, now - started, bytes_in,
            bytes_out, word, self.name, session_id))
