"""What a worker's sessions and its sockets use: one typed object, handed to them.

The worker (worker.py) builds a SessionServices at start and gives it to every
MailSession and WebSession, to LiveConfig, to the stats and control sockets, to the
PROXY-protocol accept loop and to the fleet summary (carbotui/services/nodes.py). They read
what they need from it and nothing else: a test builds one with stand-ins for the
router, the throttle and the audit log.

The fields are flat on purpose: a session reaches a service in one step
(``self.services.router``), as it reached the worker's before, so the hot path costs
what it did. ``settings`` is replaced whole on SIGHUP (``configure``): sessions read it
through this object, so a new session takes the new settings, and the parts that keep
a copy of their own get theirs in that one place.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from carbotui.proxy import control
from carbotui.proxy.ipcount import ConnectionsPerIp
from carbotui.proxy.live import LiveConfig
from carbotui.proxy.logs import NodeLogs
from carbotui.proxy.stats import Stats
from carbotui.proxy.tls import upstream_context
from carbotui.proxy.timers import Timers, for_loop
from carbotui.proxy.upstreams import Upstream, UpstreamSet

if TYPE_CHECKING:
    from carbotui.core.settings import Settings
    from carbotui.backends.directory import MailServer
    from carbotui.proxy.relay import Splice

SESSION_IDS_PER_WORKER = 10_000_000_000     # session ids are unique across a node's workers


class LiveSession(Protocol):
    """What the stats snapshot and the control socket read of a session."""
    id: int
    kind: str
    client_ip: str
    client_port: int
    account: str
    server: str
    state: str
    started: float
    bytes_in: int
    bytes_out: int
    splice: Splice | None

    def shutdown(self, reason: str) -> None: ...


def upstream_contexts(settings: Settings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(mail, web): the client context for TLS to the mailbox servers, for each side
    whose ``upstream_tls`` is on (one context, verified against ``[mail] upstream_ca``)."""
    mail_tls, web_tls = settings.mail.upstream_tls, settings.web.upstream_tls
    if not (mail_tls or web_tls):
        return None, None
    ca = settings.mail.upstream_ca
    ctx = upstream_context(cafile=str(ca) if ca else None)
    return (ctx if mail_tls else None), (ctx if web_tls else None)


class MailConfig:
    """The values of [mail] (MailSettings) that a mail session reads, as native fields:
    compiled, one load each instead of a Python attribute lookup on the interpreted
    settings. Made from one MailSettings (``source``); SessionServices.mail_config()
    makes a new one when the settings are replaced (SIGHUP), and a session keeps the
    one of its start."""

    source: Any
    limits: Any                        # MailLimits: for the client-side machines
    auth_wait: float
    preauth_timeout: float
    imap_idle_timeout: float
    pop3_idle_timeout: float
    connect_timeout: float
    connect_retries: int
    login_timeout: float
    max_connections: int
    max_connections_per_ip: int
    upstream_tls: bool
    send_imap_id: bool
    send_pop3_xoip: bool

    def __init__(self, mail: Any):
        self.source = mail
        self.limits = mail.limits
        self.auth_wait = mail.auth_wait
        self.preauth_timeout = mail.preauth_timeout
        self.imap_idle_timeout = mail.imap_idle_timeout
        self.pop3_idle_timeout = mail.pop3_idle_timeout
        self.connect_timeout = mail.connect_timeout
        self.connect_retries = mail.connect_retries
        self.login_timeout = mail.login_timeout
        self.max_connections = mail.max_connections
        self.max_connections_per_ip = mail.max_connections_per_ip
        self.upstream_tls = mail.upstream_tls
        self.send_imap_id = mail.send_imap_id
        self.send_pop3_xoip = mail.send_pop3_xoip


# Compiled by mypyc (setup.py): a native class, whose fields compiled code (mail.py,
# web.py) reads in one load. Typed Any: the fields a test gives a stand-in (settings,
# router, throttle, audit log, ...), which a declared type would refuse at assignment; an
# Any field is read natively all the same. A compiled dataclass evaluates its annotations
# at import: only names imported for real (not under TYPE_CHECKING). mypyc leaves an
# init=False field's default unset: __post_init__ sets them.
@dataclass(slots=True, eq=False)      # slots: the interpreted build's one-step reads too
class SessionServices:
    settings: Any                          # Settings
    loop: Any                              # the AbstractEventLoop (get_running_loop()
                                           # costs a getpid() on 3.11)
    router: Any                            # Router
    throttle: Any                          # Throttle
    audit: Any                             # AuditLog
    index: int = 0                         # supervisord's process_num
    node_id: str = ""                      # this node in the fleet view
    tls: Any = None                        # TlsContexts: the front context (TLS listeners,
                                           # STARTTLS)
    directory: Any = None                  # Directory: LDAP (live.py; its search count in
                                           # the stats)
    cache: Any = None                      # Memcache: memcached (the fleet summary; its
                                           # state in the stats)
    mail_upstream_tls: ssl.SSLContext | None = None   # None: plaintext to the mailbox servers
    web_upstream_tls: ssl.SSLContext | None = None
    maintenance: set[str] = field(default_factory=set)  # hostnames: no new logins there
    logs: NodeLogs | None = None           # access.log, sessions.log (None: not written)
    stats: Stats = field(default_factory=Stats)
    connections_per_ip: ConnectionsPerIp = field(default_factory=ConnectionsPerIp)
    sessions: dict[int, LiveSession] = field(default_factory=dict)   # live ones, by id
    # (address, port) -> (expires, CAPA answer) of POP3 mailbox servers (mail.py)
    pop3_server_capa: dict[tuple[str, int], tuple[float, dict]] = field(default_factory=dict)
    draining: bool = False                 # SIGTERM: listeners closed, sessions finishing
    # (WebSession, transport) -> bool: an HTTPS or admin connection whose handshake picked
    # h2 is handed to HTTP/2 (h2conn.hand_over, given by the worker; None: HTTP/1.1 only)
    h2_hand_over: Any = None
    # made from the above
    name: str = field(init=False)          # proxy_NN
    web_upstreams: UpstreamSet = field(init=False)
    admin_upstreams: UpstreamSet = field(init=False)
    live: LiveConfig = field(init=False)   # cluster settings from LDAP: mail mode, vhosts
    _last_id: int = field(init=False)     # the last session id given, less _id_base
    _id_base: int = field(init=False)
    _waiting: int = field(init=False)     # sessions_gone() callers
    _all_gone: asyncio.Event = field(init=False)
    _mail_config: MailConfig | None = field(init=False)   # of settings.mail (mail_config)
    timers: Timers = field(init=False)    # the sessions' deadlines, on one loop timer

    def __post_init__(self) -> None:
        self.name = f"proxy_{self.index:02d}"
        web_kind = "httpssl" if self.settings.web.upstream_tls else "http"
        self.web_upstreams = UpstreamSet(web_kind, self.in_maintenance)
        self.admin_upstreams = UpstreamSet("admin", self.in_maintenance)
        self.live = LiveConfig(self)
        self._id_base = self.index * SESSION_IDS_PER_WORKER
        self._last_id = 0
        self._waiting = 0
        self._mail_config = None
        self._all_gone = asyncio.Event()
        self.timers = for_loop(self.loop)

    # -- settings -------------------------------------------------------------
    def configure(self, settings: Settings) -> None:
        """Hand ``settings`` to every part that keeps a copy (at start and on SIGHUP).
        Live sessions keep what they read at their start; new ones read these."""
        self.settings = settings
        self.mail_upstream_tls, self.web_upstream_tls = upstream_contexts(settings)
        self.maintenance = control.load_maintenance(settings.run_dir)
        if self.directory is not None:
            self.directory.settings = settings
        if self.cache is not None:
            self.cache.timeout = settings.memcached_timeout
            self.cache.reconnect = settings.memcached_reconnect
        self.router.ttl = settings.memcached_ttl
        self.throttle.settings = settings.throttle
        self.live.version = ""                 # re-apply certificates and servers

    def use_servers(self, servers: dict[str, MailServer]) -> None:
        """The mailbox servers LDAP lists now (live.py): routes and web upstreams."""
        self.router.servers = servers
        self.web_upstreams.update(servers)
        self.admin_upstreams.update(servers)

    def mail_config(self) -> MailConfig:
        """settings.mail's values for a new mail session: made again whenever the
        settings hold another [mail] (configure(), or settings replaced directly)."""
        mail = self.settings.mail
        config = self._mail_config
        if config is None or config.source is not mail:
            config = self._mail_config = MailConfig(mail)
        return config

    # -- sessions -------------------------------------------------------------
    def next_session_id(self) -> int:
        self._last_id += 1
        return self._id_base + self._last_id

    def session_ended(self, session_id: int) -> None:
        sessions = self.sessions
        sessions.pop(session_id, None)
        if self._waiting and not sessions:
            self._all_gone.set()

    async def sessions_gone(self) -> None:
        """Until no session is left (PROXY listeners' included)."""
        self._waiting += 1
        try:
            while self.sessions:
                self._all_gone.clear()
                await self._all_gone.wait()
        finally:
            self._waiting -= 1

    # -- mailbox servers ------------------------------------------------------
    def in_maintenance(self, hostname: str) -> bool:
        return hostname in self.maintenance

    def upstreams_for(self, kind: str) -> UpstreamSet:
        """The web upstreams a listener of ``kind`` (http, https, admin) balances over."""
        return self.admin_upstreams if kind == "admin" else self.web_upstreams

    def all_upstreams(self) -> list[Upstream]:
        return [*self.web_upstreams.upstreams.values(), *self.admin_upstreams.upstreams.values()]
