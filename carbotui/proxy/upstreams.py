"""Web upstreams: the mailbox servers' web ports, balancing, health, keep-alive.

Health is both passive (a failed connect takes the upstream out for
``fail_timeout``) and active (a GET of ``health_path`` every
``health_interval`` brings it back as soon as it answers 200), so a dead
server is out within seconds and back within seconds of recovering.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field

from carbotui.core.settings import WebSettings
from carbotui.backends.directory import MailServer
from carbotui.protocols import http11

log = logging.getLogger("carbotui.proxy.upstreams")


@dataclass(eq=False)
class Upstream:
    server: MailServer
    port_kind: str                   # "http" | "httpssl" | "admin"
    healthy: bool = True
    down_until: float = 0.0
    active: int = 0
    requests: int = 0
    errors: int = 0
    idle: list = field(default_factory=list)     # kept-alive HttpConnection objects
    # read per request (access.log, the session's server): plain attributes, not
    # properties (an interpreted call each); ``server`` is never replaced (update()
    # makes a new Upstream when a server changes)
    address: str = field(init=False)
    name: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.address = self.server.address
        self.name = self.server.short_name
        self.port = self.server.ports[self.port_kind]

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.down_until

    def failed(self, fail_timeout: float) -> None:
        self.errors += 1
        if self.healthy:
            log.warning("web upstream %s (%s) failed; out for %gs or until its health "
                        "check passes", self.name, self.port_kind, fail_timeout)
        self.healthy = False
        self.down_until = time.monotonic() + fail_timeout
        self.drop_idle()

    def drop_idle(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def ip_hash(client_ip: str) -> int:
    """Zimbra's IP hash (reference §6): hash=89; hash=(hash*113+byte)%6271."""
    try:
        packed = ipaddress.ip_address(client_ip).packed
    except ValueError:
        packed = b""
    h = 89
    for b in packed:
        h = (h * 113 + b) % 6271
    return h


class UpstreamSet:
    """The upstreams of one kind (web or admin), rebuilt when servers change."""

    def __init__(self, port_kind: str, in_maintenance=lambda _: False):
        self.port_kind = port_kind
        self.in_maintenance = in_maintenance
        self.upstreams: dict[str, Upstream] = {}
        self._rr = 0

    def update(self, servers: dict[str, MailServer]) -> None:
        fresh = {}
        for name, server in servers.items():
            # Every mailbox server with an address can be a user's own; only lookup
            # targets take balanced traffic (drain one by setting it FALSE).
            if not server.address:
                continue
            old = self.upstreams.get(name)
            if old is not None and old.server == server:
                fresh[name] = old
            else:
                if old is not None:
                    old.drop_idle()
                fresh[name] = Upstream(server, self.port_kind)
        for name, old in self.upstreams.items():
            if name not in fresh:
                old.drop_idle()
        self.upstreams = fresh

    def for_server(self, hostname: str) -> Upstream | None:
        return self.upstreams.get(hostname)

    def pick(self, client_ip: str, method: str) -> Upstream | None:
        """A usable upstream by the balancing method, or None if all are down."""
        now = time.monotonic()
        in_maintenance = self.in_maintenance
        ups: list[Upstream] = []          # the balanced ones
        live: list[Upstream] = []         # of those, the usable ones (Upstream.usable)
        for u in self.upstreams.values():
            server = u.server
            if server.lookup_target and not in_maintenance(server.hostname):
                ups.append(u)
                if u.healthy and now >= u.down_until:
                    live.append(u)
        if not live:
            return None
        if method == "least-conn":
            return min(live, key=lambda u: (u.active, u.requests))
        if method == "ip-hash":
            # Zimbra: peer = hash % npeers over all peers, skipping the down ones.
            start = ip_hash(client_ip) % len(ups)
            for i in range(len(ups)):
                candidate = ups[(start + i) % len(ups)]
                if candidate.usable(now):
                    return candidate
        self._rr = (self._rr + 1) % len(live)
        return live[self._rr]


async def check_health(upstream: Upstream, settings: WebSettings, ssl_ctx=None) -> bool:
    """One active check: GET health_path answered with 200."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(upstream.address, upstream.port, ssl=ssl_ctx,
                                    server_hostname=upstream.server.hostname if ssl_ctx else None),
            min(settings.connect_timeout, 3.0))
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(http11.serialize_request_head(
            b"GET", settings.health_path.encode(),
            [(b"Host", upstream.server.hostname.encode()), (b"Connection", b"close")]))
        line = await asyncio.wait_for(reader.readline(), 3.0)
        parts = line.split()
        return len(parts) >= 2 and parts[1] == b"200"
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


async def health_loop(sets: list[UpstreamSet], settings_of, ssl_ctx_of) -> None:
    """Forever: check every upstream, mark it healthy or not."""
    while True:
        settings = settings_of()
        checks = [(u, check_health(u, settings, ssl_ctx_of()))
                  for s in sets for u in list(s.upstreams.values())]
        results = await asyncio.gather(*(c for _, c in checks), return_exceptions=True)
        for (upstream, _), ok in zip(checks, results):
            ok = ok is True
            if ok and not upstream.healthy:
                log.warning("web upstream %s (%s) is healthy again", upstream.name,
                            upstream.port_kind)
                upstream.down_until = 0.0
            elif not ok and upstream.healthy:
                upstream.failed(settings.fail_timeout)
            upstream.healthy = ok
        await asyncio.sleep(settings.health_interval)
