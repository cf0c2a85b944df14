"""A worker's counters, and its stats socket (var/run/proxy_NN.sock).

Sessions count into ``Stats``; a client of the socket (the dashboard, `carbotui
stats`) connects and reads until EOF: one JSON document, a
carbotui.backends.worker_sockets.WorkerSnapshot. Cheap enough to poll every second with
thousands of sessions: a snapshot is built only on request.
"""
from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from carbotui.services import nodes

from carbotui.backends import worker_sockets as wire
from carbotui.proxy import privileges

if TYPE_CHECKING:
    from carbotui.proxy.context import SessionServices

SOCKET_MODE = 0o660


_BOUNDS_MS = tuple(b * 1000 for b in wire.CONNECT_BUCKETS)


@dataclass
class BackendCounters:
    active: int = 0
    sessions: int = 0
    errors: int = 0
    connect_ms: float = 0.0        # moving average of connect+greeting time
    # the same times as a histogram (wire.CONNECT_BUCKETS, then +Inf) and their sum
    connect_counts: list = field(default_factory=lambda: [0] * (len(_BOUNDS_MS) + 1))
    connect_sum_ms: float = 0.0

    def connected(self, ms: float) -> None:
        self.connect_ms = ms if not self.sessions else 0.8 * self.connect_ms + 0.2 * ms
        self.sessions += 1
        self.connect_counts[bisect.bisect_left(_BOUNDS_MS, ms)] += 1
        self.connect_sum_ms += ms


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    connections: Counter = field(default_factory=Counter)      # by listener kind
    logins_ok: Counter = field(default_factory=Counter)        # by protocol
    logins_failed: Counter = field(default_factory=Counter)
    logins_temp: Counter = field(default_factory=Counter)
    throttled: Counter = field(default_factory=Counter)         # "ip" | "user" | "ip_connections"
    web_requests: Counter = field(default_factory=Counter)     # by listener kind
    rejected_busy: int = 0
    proxy_refused: int = 0               # PROXY headers missing, malformed or untrusted
    backends: dict[str, BackendCounters] = field(default_factory=dict)
    # (listener kind, upstream short name or "-", status class "2xx") -> responses
    web_responses: Counter = field(default_factory=Counter)
    # (listener kind, why: sessions.log's word) -> ended mail sessions
    sessions_ended: Counter = field(default_factory=Counter)

    def backend(self, name: str) -> BackendCounters:
        if name not in self.backends:
            self.backends[name] = BackendCounters()
        return self.backends[name]


def snapshot(services: SessionServices) -> wire.WorkerSnapshot:
    r = services.router
    st = services.stats
    name = services.name
    live_sessions = list(services.sessions.values())
    upstreams = services.all_upstreams()
    maintenance = services.maintenance
    in_maintenance = services.in_maintenance
    cache, live = services.cache, services.live
    return wire.WorkerSnapshot(
        worker=name, pid=os.getpid(), time=time.time(), started=st.started,
        draining=services.draining,
        connections=dict(st.connections),
        logins=wire.Logins(ok=dict(st.logins_ok), failed=dict(st.logins_failed),
                           temporary=dict(st.logins_temp)),
        throttled=dict(st.throttled), rejected_busy=st.rejected_busy,
        sockets=len(live_sessions) + sum(1 for s in live_sessions
                                         if getattr(s, "splice", None) is not None)
        + sum(len(u.idle) for u in upstreams),
        proxy_refused=st.proxy_refused,
        cache=wire.CacheStats(hits=r.hits, misses=r.misses, ldap_lookups=r.ldap_lookups,
                              poisoned=r.poisoned, memcached_available=cache.available,
                              memcached_errors=cache.errors),
        ldap_searches=services.directory.searches,
        backends={short: wire.BackendStats(
            active=b.active, sessions=b.sessions, errors=b.errors, connect_ms=b.connect_ms,
            maintenance=any(h.split(".", 1)[0] == short for h in maintenance))
            for short, b in st.backends.items()},
        maintenance=sorted(maintenance),
        web=wire.WebStats(
            requests=dict(st.web_requests),
            upstreams=[wire.UpstreamStats(
                server=u.name, port=u.port, kind=u.port_kind, healthy=u.healthy,
                active=u.active, requests=u.requests,
                maintenance=in_maintenance(u.server.hostname), errors=u.errors,
                idle=len(u.idle)) for u in upstreams]),
        config=wire.ConfigStats(version=live.version, applied_at=live.applied_at,
                                mail_mode=live.mail_mode, ldap_error=live.error,
                                virtual_hosts=sorted(live.vhosts)),
        sessions=[wire.Session(s.id, name, s.kind, s.client_ip, s.client_port, s.account,
                               s.server, s.state, round(s.started, 3), s.bytes_in,
                               s.bytes_out)
                  for s in live_sessions],
        metrics=wire.MetricStats(
            blocked=getattr(services.throttle, "blocked", 0),
            web_responses=_nested(st.web_responses),
            connect={short: wire.ConnectTimes(list(b.connect_counts),
                                              round(b.connect_sum_ms / 1000, 6))
                     for short, b in st.backends.items()},
            sessions_ended=_nested(st.sessions_ended)),
    )


def _nested(counter: Counter) -> dict:
    """{(a, b, ...): n} as {a: {b: ... n}} (JSON has no tuple keys)."""
    out: dict = {}
    for key, n in counter.items():
        d = out
        for part in key[:-1]:
            d = d.setdefault(part, {})
        d[key[-1]] = n
    return out


async def serve(services: SessionServices, path: str) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(snapshot(services).encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    # 0660, whatever the umask: the worker's user and group (an admin in that group, e.g.
    # `carbotui stats` without root); nobody else sees sessions, accounts and addresses.
    sock = privileges.unix_listener(path, SOCKET_MODE)
    return await asyncio.start_unix_server(handle, sock=sock)


# --- the fleet view (carbotui/services/nodes.py) -------------------------------------------------


def fleet_summary(services: SessionServices) -> dict:
    """What this worker tells the other nodes about itself (`carbotui fleet`)."""
    st, live = services.stats, services.live
    return {
        "node": services.node_id, "worker": services.name, "pid": os.getpid(),
        "time": time.time(), "started": st.started, "sessions": len(services.sessions),
        "logins_ok": sum(st.logins_ok.values()), "logins_failed": sum(st.logins_failed.values()),
        "config": live.version, "mail_mode": live.mail_mode,
        "listen": sorted(str(e) for eps in services.settings.listen.values() for e in eps)[:8],
    }


async def publish_forever(services: SessionServices) -> None:
    while True:
        try:
            await nodes.publish(services.cache, services.node_id, services.name,
                                fleet_summary(services))
        except Exception:  # noqa: BLE001 - the fleet view must never hurt serving
            pass
        await asyncio.sleep(nodes.PUBLISH_EVERY)
