"""One proxy worker process: listeners, shared state, reload and drain.

The worker owns what every session needs (settings, router, audit log, TLS
contexts) and the registry of live sessions that the stats endpoint and the
drain logic read. Sessions themselves live in mail.py.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from carbotui import config as config_mod
from carbotui.audit import AuditLog
from carbotui import nodes
from carbotui.directory import Directory
from carbotui.memcache import Memcache
from carbotui.routes import Router
from carbotui.throttle import Throttle
from workers import control, listeners
from workers.ipcount import ConnectionsPerIp
from workers.live import LiveConfig
from workers.tls import TlsContexts, upstream_context
from workers.upstreams import UpstreamSet, health_loop

log = logging.getLogger("workers.worker")

# Mail listener kind -> (protocol, implicit TLS, audit thread name as Zimbra's)
MAIL_KINDS = {
    "imap": ("imap", False, "ImapServer"),
    "imaps": ("imap", True, "ImapSSLServer"),
    "pop3": ("pop3", False, "Pop3Server"),
    "pop3s": ("pop3", True, "Pop3SSLServer"),
}
WEB_KINDS = {"http": False, "https": True, "admin": True}      # kind -> TLS


@dataclass
class BackendStats:
    active: int = 0
    sessions: int = 0
    errors: int = 0
    connect_ms: float = 0.0        # moving average of connect+greeting time

    def connected(self, ms: float) -> None:
        self.connect_ms = ms if not self.sessions else 0.8 * self.connect_ms + 0.2 * ms
        self.sessions += 1


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    connections: Counter = field(default_factory=Counter)      # by listener kind
    logins_ok: Counter = field(default_factory=Counter)        # by protocol
    logins_failed: Counter = field(default_factory=Counter)
    logins_temp: Counter = field(default_factory=Counter)
    throttled: Counter = field(default_factory=Counter)         # "ip" | "user"
    web_requests: Counter = field(default_factory=Counter)     # by listener kind
    rejected_busy: int = 0
    proxy_refused: int = 0               # PROXY headers missing, malformed or untrusted
    backends: dict[str, BackendStats] = field(default_factory=dict)

    def backend(self, name: str) -> BackendStats:
        if name not in self.backends:
            self.backends[name] = BackendStats()
        return self.backends[name]


class Worker:
    def __init__(self, settings: config_mod.Settings, index: int):
        self.settings = settings
        self.index = index
        self.name = f"proxy_{index:02d}"
        # Kept: on Python 3.11 every get_running_loop() costs a getpid() syscall.
        self.loop = asyncio.get_running_loop()
        self.node_id = settings.node_id
        self.stats = Stats()
        self.sessions: dict[int, object] = {}
        self.connections_per_ip = ConnectionsPerIp()   # per-IP caps (web; mail may use it)
        self._ids = itertools.count(1)
        self.directory = Directory(settings)
        self.cache = Memcache(settings.memcached_servers, timeout=settings.memcached_timeout,
                              reconnect=settings.memcached_reconnect)
        self.router = Router(self.directory, self.cache, ttl=settings.memcached_ttl)
        self.throttle = Throttle(self.cache, settings.throttle)
        # (address, port) -> (expires, CAPA answer) of POP3 mailbox servers (mail.py)
        self.pop3_server_capa: dict[tuple[str, int], tuple[float, dict]] = {}
        self.audit = AuditLog(settings.audit_log)
        self.tls = TlsContexts(settings)
        self.upstream_tls = self._upstream_context(settings)
        web_kind = "httpssl" if settings.web.upstream_tls else "http"
        self.web_upstreams = UpstreamSet(web_kind, settings.web, self.in_maintenance)
        self.admin_upstreams = UpstreamSet("admin", settings.web, self.in_maintenance)
        self.live = LiveConfig(self)
        self.maintenance: set[str] = control.load_maintenance(settings.run_dir)
        self._tasks: list[asyncio.Task] = []
        self._accepting: list = []          # (socket, accept task) of PROXY listeners
        self.servers: list[asyncio.AbstractServer] = []
        self.draining = False
        self.stopped = asyncio.Event()
        self._all_gone = asyncio.Event()

    @property
    def upstream_web_tls(self):
        return self.upstream_tls if self.settings.web.upstream_tls else None

    def in_maintenance(self, hostname: str) -> bool:
        return hostname in self.maintenance

    def upstreams_for(self, kind: str) -> UpstreamSet:
        return self.admin_upstreams if kind == "admin" else self.web_upstreams

    def all_upstreams(self):
        return [*self.web_upstreams.upstreams.values(), *self.admin_upstreams.upstreams.values()]

    @staticmethod
    def _upstream_context(settings):
        if not (settings.mail.upstream_tls or settings.web.upstream_tls):
            return None
        ca = settings.mail.upstream_ca
        return upstream_context(cafile=str(ca) if ca else None)

    @property
    def stats_path(self):
        return self.settings.run_dir / f"{self.name}.sock"

    @property
    def control_path(self):
        return self.settings.run_dir / f"{self.name}.ctl"

    async def _drained(self, closed: list) -> None:
        await asyncio.gather(*closed)
        while self.sessions:        # also sessions from PROXY listeners
            self._all_gone.clear()
            if self.sessions:
                await self._all_gone.wait()

    def session_ended(self, session_id: int) -> None:
        self.sessions.pop(session_id, None)
        if self.draining and not self.sessions:
            self._all_gone.set()

    def next_session_id(self) -> int:
        return self.index * 10_000_000_000 + next(self._ids)

    async def start(self) -> None:
        from workers import stats
        from workers.mail import MailSession      # late: sessions import worker types
        from workers.web import WebSession

        loop = asyncio.get_running_loop()
        # Start even if LDAP is down: cached routes still work and it may come back.
        await self.live.refresh()
        self.stats_server = await stats.serve(self, str(self.stats_path))
        self.control_server = await control.serve(self, self.control_path)
        for kind, endpoints in self.settings.listen.items():
            for endpoint in endpoints:
                if kind in MAIL_KINDS:
                    proto, tls, thread = MAIL_KINDS[kind]

                    def factory(kind=kind, proto=proto, tls=tls, thread=thread, addresses=None):
                        return MailSession(self, kind, proto, tls, f"{thread}-{self.index}",
                                           addresses)
                else:
                    tls = WEB_KINDS[kind]

                    def factory(kind=kind, tls=tls, addresses=None):
                        return WebSession(self, kind, tls, addresses)
                sock = listeners.bind(endpoint)
                ssl_ctx = self.tls.front if tls else None
                if endpoint.proxy_protocol:
                    from workers import proxied
                    self._accepting.append((sock, loop.create_task(
                        proxied.serve(self, sock, factory, ssl_ctx, endpoint))))
                else:
                    self.servers.append(await loop.create_server(
                        factory, sock=sock, ssl=ssl_ctx,
                        ssl_handshake_timeout=10 if tls else None, backlog=listeners.BACKLOG))
                log.info("listening on %s (%s)", endpoint, kind)
        self._tasks = [
            loop.create_task(self.live.run()),
            loop.create_task(nodes.publish_forever(self)),
            loop.create_task(health_loop([self.web_upstreams, self.admin_upstreams],
                                         lambda: self.settings.web,
                                         lambda: self.upstream_web_tls)),
        ]

    def reload(self) -> None:
        """SIGHUP: new settings and certificates for new sessions; live ones go on."""
        try:
            settings = config_mod.load(self.settings.path)
            self.tls.load(settings)
        except (config_mod.ConfigError, OSError, ValueError) as exc:
            log.error("reload refused, keeping the running settings: %s", exc)
            return
        if settings.listen != self.settings.listen:
            log.warning("listener changes need a restart of the workers; other settings applied")
        self.settings = settings
        self.upstream_tls = self._upstream_context(settings)
        self.maintenance = control.load_maintenance(settings.run_dir)
        self.directory.settings = settings
        self.router.ttl = settings.memcached_ttl
        self.throttle.settings = settings.throttle
        self.cache.timeout = settings.memcached_timeout
        self.cache.reconnect = settings.memcached_reconnect
        self.web_upstreams.settings = self.admin_upstreams.settings = settings.web
        self.live.version = ""               # re-apply certificates and servers
        asyncio.get_running_loop().create_task(self.live.refresh())
        log.info("reloaded %s", settings.path)

    async def drain(self) -> None:
        """SIGTERM: stop accepting, let sessions finish (bounded), then exit."""
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        # Registered before close(): uvloop then wakes them when the last connection of
        # each server is gone, TLS handshakes still in progress included.
        closed = [loop.create_task(server.wait_closed()) for server in self.servers]
        await asyncio.sleep(0)
        for server in self.servers:
            server.close()
        if self._accepting:
            # Behind a balancer: keep accepting until its health checks (which now
            # fail, see proxied.py) have taken this node out, then stop.
            await asyncio.sleep(self.settings.proxy_drain_grace)
        for sock, task in self._accepting:
            task.cancel()
            sock.close()
        for task in self._tasks:
            task.cancel()
        deadline = time.monotonic() + self.settings.mail.drain_timeout
        log.info("draining %d session(s), at most %gs", len(self.sessions),
                 self.settings.mail.drain_timeout)
        try:
            await asyncio.wait_for(self._drained(closed),
                                   max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        for session in list(self.sessions.values()):
            session.shutdown("worker stopping")
        self.stats_server.close()
        self.stats_path.unlink(missing_ok=True)
        self.control_server.close()
        self.control_path.unlink(missing_ok=True)
        await self.cache.close()
        self.directory.close()
        self.audit.close()
        self.stopped.set()
