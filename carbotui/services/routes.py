"""Route lookup: login -> account -> mailbox server, cached in memcached.

Keys follow Carbonio's nginx (reference §3.1) so ``zmproxypurge``-style tools
keep working: ``route:proto=imap;user=<account>``, ``alias:user=<login>;ip=<ip>``,
``route:proto=httpssl;id=<zimbraId>``. Everything a client typed is escaped
before it becomes part of a key (CVE-2022-27924): only ``[A-Za-z0-9.@_+-]``
pass as they are, every other byte becomes ``%XX``, so CR, LF, space, ``;``
and control bytes can never reach memcached or split a key. A cached value is
used only if it names a mailbox server the directory knows.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import ClassVar, Final

from mypy_extensions import mypyc_attr

from carbotui.backends.directory import Account, Directory, DirectoryUnavailable, MailServer
from carbotui.backends.memcache import Memcache

log: Final = logging.getLogger("carbotui.services.routes")

ROUTE_PROTOCOLS: Final = ("http", "imap", "pop3", "httpssl", "imapssl", "pop3ssl")
_SAFE_BYTE: Final = re.compile(rb"[^A-Za-z0-9.@_+\-]")
MAX_KEY: Final = 250


def escape(text: str) -> str:
    """Percent-escape every byte outside the safe set (lower-cased first)."""
    raw = text.lower().encode("utf-8", "surrogateescape")
    return _SAFE_BYTE.sub(lambda m: b"%%%02X" % m.group()[0], raw).decode("ascii")


def _key(text: str) -> bytes:
    key = text.encode("ascii")
    # memcached keys stop at 250 bytes; nginx hashes longer ones the same way.
    return key if len(key) <= MAX_KEY else hashlib.md5(key).hexdigest().encode()


def route_key(proto: str, user: str) -> bytes:
    return _key(f"route:proto={proto};user={escape(user)}")


def id_route_key(proto: str, zimbra_id: str, *, admin: bool = False) -> bytes:
    return _key(f"route:proto={proto};{'admin=1;' if admin else ''}id={escape(zimbra_id)}")


def alias_key(login: str, ip: str) -> bytes:
    return _key(f"alias:user={escape(login)};ip={escape(ip)}")


@mypyc_attr(native_class=False)          # compiled (mypyc): a builtin exception's subclass
class RouteError(RuntimeError):
    """No usable route right now (temporary): LDAP down, unknown mailbox server."""


@dataclass(frozen=True)
class Route:
    account: str          # canonical name, used for the upstream login and the audit line
    server: MailServer
    address: str
    port: int
    cached: bool
    short_name: str       # server.short_name (an interpreted property), read once per route


class Router:
    SERVER_REFRESH = 60.0     # seconds between re-reads of the server list
    # A route just used is remembered in the worker for a few seconds: a client
    # that reconnects (mobile clients, POP3 polling, a burst of IMAP connections)
    # costs no memcached round trip. Short, so a flushCache or a moved mailbox is
    # seen within seconds; a failed login forgets it at once.
    # A class attribute even when compiled: bench/quiet_worker.py sets Router.LOCAL_TTL.
    LOCAL_TTL: ClassVar[float] = 5.0
    LOCAL_MAX = 10000
    # A name (or zimbraId) LDAP just found no account for is answered "no such account"
    # from memory for a few seconds, so an unauthenticated client repeating it costs no
    # LDAP search each time (review L4). Per worker, bounded (oldest dropped first);
    # short, so an account created meanwhile is found seconds later.
    NEGATIVE_TTL = 5.0
    NEGATIVE_MAX = 10000

    def __init__(self, directory: Directory, cache: Memcache, *, ttl: int):
        self.directory = directory
        self.cache = cache
        self.ttl = ttl
        self.servers: dict[str, MailServer] = {}
        self._servers_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._local: dict[tuple[str, str, str], tuple[float, Route]] = {}
        self._negative: dict[tuple[str, str], float] = {}   # (name, local ip) -> until
        self.negative_hits = 0
        self.hits = 0
        self.misses = 0
        self.ldap_lookups = 0
        self.poisoned = 0

    async def refresh_servers(self, *, force: bool = False) -> dict[str, MailServer]:
        async with self._refresh_lock:
            if force or time.monotonic() - self._servers_at > self.SERVER_REFRESH:
                self.servers = await asyncio.to_thread(self.directory.servers)
                self._servers_at = time.monotonic()
        return self.servers

    def _server_by_endpoint(self, value: bytes, proto: str) -> MailServer | None:
        """The known server a cached 'ip:port' names, else None (poisoned or stale)."""
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        for server in self.servers.values():
            if server.address and proto in server.ports and server.endpoint(proto) == text:
                return server
        return None

    def _route(self, account: str, server: MailServer, proto: str, cached: bool) -> Route:
        return Route(account, server, server.address, server.ports[proto], cached,
                     server.short_name)

    async def _cached(self, login: str, proto: str, local_ip: str) -> Route | None:
        if not self.cache.servers:
            return None
        akey, rkey = alias_key(login, local_ip), route_key(proto, login)
        found = await self.cache.get_many([akey, rkey])
        account = login
        if akey in found:
            account = found[akey].decode("utf-8", "replace")
            if account != login:
                rkey = route_key(proto, account)
                found.update(await self.cache.get_many([rkey]))
        if rkey not in found:
            return None
        if not self.servers:
            await self.refresh_servers()
        server = self._server_by_endpoint(found[rkey], proto)
        if server is None:
            self.poisoned += 1
            log.warning("ignoring cached route %r for %s: it names no known mailbox server; "
                        "deleting it", found[rkey][:80], rkey.decode())
            await self.cache.delete(rkey)
            return None
        if "@" not in account:
            return None           # never trust a cached route for an unqualified name
        return self._route(account, server, proto, cached=True)

    def recent_mail_route(self, login: str, proto: str, local_ip: str) -> Route | None:
        """The route this worker used for the login within LOCAL_TTL, else None: a plain
        call, so the usual login needs no await (route_mail falls back to this too)."""
        local = self._local.get((login.lower(), proto, local_ip))
        if local is not None and local[0] > time.monotonic():
            self.hits += 1
            return local[1]
        return None

    async def route_mail(self, login: str, proto: str, local_ip: str) -> Route | None:
        """The route for a mail login; None when no such account exists.

        Raises RouteError when the answer cannot be known now (LDAP down,
        account on a server the directory does not describe)."""
        recent = self.recent_mail_route(login, proto, local_ip)
        if recent is not None:
            return recent
        login = login.lower()
        key = (login, proto, local_ip)
        now = time.monotonic()
        if self._known_missing((login, local_ip), now):
            return None
        route = await self._cached(login, proto, local_ip)
        if route is not None:
            self.hits += 1
        else:
            self.misses += 1
            account = await self._lookup(login, local_ip)
            if account is None:
                self._remember_missing((login, local_ip))
                return None
            server = await self._server_for(account)
            route = self._route(account.name, server, proto, cached=False)
            await self._remember(login, local_ip, proto, route)
        if len(self._local) >= self.LOCAL_MAX:
            self._local.clear()
        self._local[key] = (now + self.LOCAL_TTL, route)
        return route

    async def route_by_id(self, zimbra_id: str, proto: str, *, admin: bool = False
                          ) -> Route | None:
        """The route for a web request carrying an auth token (by zimbraId)."""
        key = id_route_key(proto, zimbra_id, admin=admin)
        port_kind = "admin" if admin else proto
        missing_key = (zimbra_id, "")          # an id is the same account whatever the ip
        if self._known_missing(missing_key, time.monotonic()):
            return None
        if self.cache.servers:
            found = await self.cache.get_many([key])
            if key in found:
                if not self.servers:
                    await self.refresh_servers()
                server = self._server_by_endpoint(found[key], port_kind)
                if server is not None:
                    self.hits += 1
                    return self._route("", server, port_kind, cached=True)
                self.poisoned += 1
                await self.cache.delete(key)
        self.misses += 1
        self.ldap_lookups += 1
        try:
            account = await asyncio.to_thread(self.directory.find_account_by_id, zimbra_id)
        except DirectoryUnavailable as exc:
            raise RouteError(str(exc)) from None
        if account is None:
            self._remember_missing(missing_key)
            return None
        server = await self._server_for(account)
        route = self._route(account.name, server, port_kind, cached=False)
        await self.cache.add(key, server.endpoint(port_kind).encode(), self.ttl)
        return route

    def _known_missing(self, key: tuple[str, str], now: float) -> bool:
        until = self._negative.get(key)
        if until is None:
            return False
        if until > now:
            self.negative_hits += 1
            return True
        del self._negative[key]
        return False

    def _remember_missing(self, key: tuple[str, str]) -> None:
        negative = self._negative
        negative.pop(key, None)                # re-inserted last: dropped last
        while len(negative) >= self.NEGATIVE_MAX:
            del negative[next(iter(negative))]    # the oldest entry
        negative[key] = time.monotonic() + self.NEGATIVE_TTL

    async def _lookup(self, login: str, local_ip: str) -> Account | None:
        self.ldap_lookups += 1
        try:
            def find():
                return self.directory.find_account(self.directory.qualify(login, local_ip))
            return await asyncio.to_thread(find)
        except DirectoryUnavailable as exc:
            raise RouteError(str(exc)) from None

    async def _server_for(self, account: Account) -> MailServer:
        try:
            servers = await self.refresh_servers()
            if account.mail_host not in servers:
                servers = await self.refresh_servers(force=True)
        except DirectoryUnavailable as exc:
            raise RouteError(str(exc)) from None
        server = servers.get(account.mail_host)
        if server is None or not server.address:
            raise RouteError(f"mailbox server {account.mail_host!r} of {account.name} "
                             f"is not known or has no address")
        return server

    async def _remember(self, login: str, local_ip: str, proto: str, route: Route) -> None:
        """``add``, never ``set``: an entry another worker wrote first wins."""
        value = route.server.endpoint(proto).encode()
        await self.cache.add(route_key(proto, route.account), value, self.ttl)
        if login != route.account:
            await self.cache.add(alias_key(login, local_ip), route.account.encode(), self.ttl)

    async def forget(self, login: str, proto: str, local_ip: str, account: str = "") -> None:
        """After a failed upstream login: the route may be stale (a moved mailbox)."""
        login = login.lower()
        self._local.pop((login, proto, local_ip), None)
        for key in {route_key(proto, account or login), alias_key(login, local_ip)}:
            await self.cache.delete(key)


def flush_keys(account: Account, local_ips: list[str]) -> list[bytes]:
    """Every key that can hold a route for this account (zmproxypurge's list)."""
    local_part, _, domain = account.name.partition("@")
    names = {account.name, local_part, *account.aliases}
    names.update(a.partition("@")[0] for a in account.aliases)
    keys = set()
    for proto in ROUTE_PROTOCOLS:
        for name in names:
            keys.add(route_key(proto, name))
        keys.add(id_route_key(proto, account.zimbra_id))
    keys.add(id_route_key("httpssl", account.zimbra_id, admin=True))
    for name in names:
        for ip in local_ips:
            keys.add(alias_key(name, ip))
    return sorted(keys)
