"""One proxy worker process: listeners, reload and drain.

What every session needs (settings, router, throttle, audit log, TLS contexts, the
registry of live sessions ...) is a SessionServices (context.py), built here from
the settings and handed to each session, the stats and control sockets and the
PROXY-protocol accept loops. Sessions themselves live in mail.py and web.py.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Callable

from carbotui.core import settings as config_mod
from carbotui.backends import worker_sockets
from carbotui.core.audit import AuditLog
from carbotui.backends.directory import Directory
from carbotui.backends.memcache import Memcache
from carbotui.services.routes import Router
from carbotui.services.throttle import Throttle
from carbotui.proxy import control
from carbotui.proxy import h2conn
from carbotui.proxy import listeners
from carbotui.proxy import proxied
from carbotui.proxy.logs import NodeLogs
from carbotui.proxy import stats
from carbotui.proxy.context import SessionServices
from carbotui.proxy.mail import MailSession
from carbotui.proxy.tls import TlsContexts
from carbotui.proxy.upstreams import health_loop
from carbotui.proxy.web import WebSession

log = logging.getLogger("carbotui.proxy.worker")

# Mail listener kind -> (protocol, implicit TLS, audit thread name as Zimbra's)
MAIL_KINDS = {
    "imap": ("imap", False, "ImapServer"),
    "imaps": ("imap", True, "ImapSSLServer"),
    "pop3": ("pop3", False, "Pop3Server"),
    "pop3s": ("pop3", True, "Pop3SSLServer"),
}
WEB_KINDS = {"http": False, "https": True, "admin": True}      # kind -> TLS


def services_for(settings: config_mod.Settings, index: int) -> SessionServices:
    """A worker's services, from its settings (in the running loop)."""
    directory = Directory(settings)
    cache = Memcache(settings.memcached_servers, timeout=settings.memcached_timeout,
                     reconnect=settings.memcached_reconnect)
    services = SessionServices(
        settings=settings, loop=asyncio.get_running_loop(),
        router=Router(directory, cache, ttl=settings.memcached_ttl),
        throttle=Throttle(cache, settings.throttle), audit=AuditLog(settings.audit_log),
        index=index, node_id=settings.node_id, tls=TlsContexts(settings),
        directory=directory, cache=cache, h2_hand_over=h2conn.hand_over)
    services.configure(settings)
    services.logs = NodeLogs(services)
    return services


class Worker:
    def __init__(self, settings: config_mod.Settings, index: int):
        self.index = index
        self.services = services_for(settings, index)
        self.name = self.services.name
        self._tasks: list[asyncio.Task] = []
        self._accepting: list[proxied.ProxiedListener] = []   # the PROXY listeners
        self.servers: list[asyncio.AbstractServer] = []
        self.stopped = asyncio.Event()

    @property
    def settings(self) -> config_mod.Settings:
        return self.services.settings

    @property
    def stats_path(self):
        return worker_sockets.stats_path(self.settings.run_dir, self.name)

    @property
    def control_path(self):
        return worker_sockets.control_path(self.settings.run_dir, self.name)

    async def start(self) -> None:
        services = self.services
        loop = asyncio.get_running_loop()
        # Start even if LDAP is down: cached routes still work and it may come back.
        await services.live.refresh()
        self.stats_server = await stats.serve(services, str(self.stats_path))
        self.control_server = await control.serve(services, self.control_path)
        for kind, endpoints in self.settings.listen.items():
            for endpoint in endpoints:
                # The protocol factories: partials (C), not closures, so a connection
                # costs no interpreted call before the (compiled) session's own code;
                # called as factory() or factory(addresses=...) (PROXY listeners).
                factory: Callable[..., Any]
                if kind in MAIL_KINDS:
                    proto, tls, thread = MAIL_KINDS[kind]
                    factory = functools.partial(MailSession, services, kind, proto, tls,
                                                f"{thread}-{self.index}")
                else:
                    tls = WEB_KINDS[kind]
                    # TLS: ALPN may pick HTTP/2 (h2conn.hand_over), else HTTP/1.1 as on 80
                    factory = functools.partial(WebSession, services, kind, tls)
                sock = listeners.bind(endpoint)
                ssl_ctx = services.tls.for_listener(kind) if tls else None
                if ssl_ctx is not None and kind in MAIL_KINDS:
                    # IMAPS, POP3S: TLS by carbotui/proxy/tlsbio.py over plain TCP
                    factory, ssl_ctx = listeners.implicit_tls(factory, ssl_ctx), None
                if endpoint.proxy_protocol:
                    self._accepting.append(
                        proxied.ProxiedListener(services, sock, factory, ssl_ctx, endpoint))
                else:
                    self.servers.append(await loop.create_server(
                        factory, sock=sock, ssl=ssl_ctx,
                        ssl_handshake_timeout=10 if ssl_ctx else None,
                        backlog=listeners.BACKLOG))
                log.info("listening on %s (%s)", endpoint, kind)
        self._tasks = [
            loop.create_task(services.live.run()),
            loop.create_task(stats.publish_forever(services)),
            loop.create_task(health_loop([services.web_upstreams, services.admin_upstreams],
                                         lambda: services.settings.web,
                                         lambda: services.web_upstream_tls)),
        ]

    def reload(self) -> None:
        """SIGHUP: new settings and certificates for new sessions; live ones go on."""
        services = self.services
        try:
            settings = config_mod.load(self.settings.path)
            services.tls.load(settings)
        except (config_mod.ConfigError, OSError, ValueError) as exc:
            log.error("reload refused, keeping the running settings: %s", exc)
            return
        if settings.listen != self.settings.listen:
            log.warning("listener changes need a restart of the workers; other settings applied")
        services.configure(settings)
        asyncio.get_running_loop().create_task(services.live.refresh())
        log.info("reloaded %s", settings.path)

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate's postrotate): audit.log, access.log and sessions.log are
        opened again by name; lines written meanwhile went to the moved files."""
        self.services.logs.reopen()

    async def _drained(self, closed: list) -> None:
        await asyncio.gather(*closed)
        await self.services.sessions_gone()     # also sessions from PROXY listeners

    async def drain(self) -> None:
        """SIGTERM: stop accepting, let sessions finish (bounded), then exit."""
        services = self.services
        if services.draining:
            return
        services.draining = True
        for session in list(services.sessions.values()):
            # web sessions between two requests close now (WebSession.drain_started)
            getattr(session, "drain_started", lambda: None)()
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
        for listener in self._accepting:
            listener.close()
        # closed once what each accepted is a session or gone (proxied.py)
        closed += [loop.create_task(listener.wait_closed()) for listener in self._accepting]
        for task in self._tasks:
            task.cancel()
        deadline = time.monotonic() + self.settings.mail.drain_timeout
        log.info("draining %d session(s), at most %gs", len(services.sessions),
                 self.settings.mail.drain_timeout)
        try:
            await asyncio.wait_for(self._drained(closed),
                                   max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        for session in list(services.sessions.values()):
            session.shutdown("worker stopping")
        self.stats_server.close()
        self.stats_path.unlink(missing_ok=True)
        self.control_server.close()
        self.control_path.unlink(missing_ok=True)
        await services.cache.close()
        services.directory.close()
        services.audit.close()
        services.logs.close()
        self.stopped.set()
