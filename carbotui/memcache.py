"""A small, failure-tolerant front to memcached (aiomcache underneath).

Why not aiomcache alone: a timed-out request leaves its reply in the pooled
connection, and the next request on that connection would read it (the
desync behind CVE-2022-27924). So any error or timeout throws the whole
client away and the server is skipped for ``reconnect`` seconds. While no
server answers every call degrades to "miss"/"not stored": routing goes to
LDAP and throttling fails open. The outage is logged once, and so is the
recovery.
"""
from __future__ import annotations

import asyncio
import logging
import time

import aiomcache

from carbotui.config import Endpoint

log = logging.getLogger("carbotui.memcache")


def one_at_a_time(key: bytes) -> int:
    """Jenkins one-at-a-time hash: the server choice nginx's memcache module makes."""
    h = 0
    for b in key:
        h = (h + b) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    return (h + (h << 15)) & 0xFFFFFFFF


class _Server:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.client: aiomcache.Client | None = None
        self.down_until = 0.0
        self.down = False

    def get_client(self) -> aiomcache.Client:
        if self.client is None:
            self.client = aiomcache.Client(self.endpoint.host, self.endpoint.port, pool_size=4)
        return self.client


class Memcache:
    def __init__(self, servers: tuple[Endpoint, ...], *, timeout: float, reconnect: float):
        self.servers = [_Server(e) for e in servers]
        self.timeout = timeout
        self.reconnect = reconnect
        self.errors = 0

    @property
    def available(self) -> bool:
        now = time.monotonic()
        return any(now >= s.down_until for s in self.servers)

    def _pick(self, key: bytes) -> _Server | None:
        """The hashed server, or the next live one in declaration order."""
        if not self.servers:
            return None
        now = time.monotonic()
        start = one_at_a_time(key) % len(self.servers)
        for i in range(len(self.servers)):
            server = self.servers[(start + i) % len(self.servers)]
            if now >= server.down_until:
                return server
        return None

    async def _call(self, server: _Server, method: str, *args):
        try:
            async with asyncio.timeout(self.timeout):      # no extra task, unlike wait_for
                result = await getattr(server.get_client(), method)(*args)
        except (OSError, asyncio.TimeoutError, aiomcache.exceptions.ClientException) as exc:
            await self._mark_down(server, exc)
            return None
        if server.down:
            server.down = False
            log.warning("memcached %s answers again; route cache and throttling are back",
                        server.endpoint)
        return result

    async def _mark_down(self, server: _Server, exc: BaseException) -> None:
        self.errors += 1
        client, server.client = server.client, None
        server.down_until = time.monotonic() + self.reconnect
        if not server.down:
            server.down = True
            reason = type(exc).__name__ if isinstance(exc, asyncio.TimeoutError) else str(exc)
            log.warning("memcached %s unavailable (%s); logins are routed through LDAP and "
                        "not throttled until it is back (retry every %gs)",
                        server.endpoint, reason or type(exc).__name__, self.reconnect)
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - it is being discarded anyway
                pass

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """Values found, by key; a failing server just contributes nothing."""
        groups: dict[int, list[bytes]] = {}
        for key in keys:
            server = self._pick(key)
            if server is not None:
                groups.setdefault(id(server), []).append(key)
        found: dict[bytes, bytes] = {}
        by_id = {id(s): s for s in self.servers}
        for sid, group in groups.items():
            values = await self._call(by_id[sid], "multi_get", *group)
            if values:
                found.update((k, v) for k, v in zip(group, values) if v is not None)
        return found

    async def add(self, key: bytes, value: bytes, ttl: int) -> bool:
        server = self._pick(key)
        return bool(server and await self._call(server, "add", key, value, ttl))

    async def delete(self, key: bytes) -> bool:
        server = self._pick(key)
        return bool(server and await self._call(server, "delete", key))

    async def incr(self, key: bytes, ttl: int) -> int | None:
        """Count one more; creates the counter with ``ttl``. None when unavailable."""
        server = self._pick(key)
        if server is None:
            return None
        for _ in range(2):
            try:
                async with asyncio.timeout(self.timeout):
                    value = await server.get_client().incr(key, 1)
            except aiomcache.exceptions.ClientException:
                value = None               # NOT_FOUND: create it below
            except (OSError, asyncio.TimeoutError) as exc:
                await self._mark_down(server, exc)
                return None
            if value is not None:
                return int(value)
            if await self._call(server, "add", key, b"1", ttl):
                return 1
            # Someone else created it between our incr and add: count again.
        return None

    async def stats(self) -> dict[str, dict[bytes, bytes]]:
        out = {}
        for server in self.servers:
            result = await self._call(server, "stats")
            if result is not None:
                out[str(server.endpoint)] = result
        return out

    async def close(self) -> None:
        for server in self.servers:
            if server.client is not None:
                await server.client.close()
                server.client = None
