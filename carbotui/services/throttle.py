"""Login throttling and IP blocks, counted in memcached like Carbonio's nginx.

Every worker of every node shares memcached, so they all count together
(reference §5). Keys (§3.1), always built from ``routes.escape``:

    throttle:proto=<i|p|h>,ip=<ip>   logins from an IP, per protocol (h: web)
    throttle:user=<account>          login attempts of one account (canonical name)
    block:ip=<ip>                    an IP block: JSON {ip, reason, since, until, by}
    blocks:index                     JSON list of blocked IPs, for listing only

Semantics, and where they differ from Carbonio:

* IP limit: the protocol's own limit if > 0, else the general ``ip_limit``
  (nginx ``mail_login_ip_<proto>_max`` falling back to ``mail_login_ip_max``);
  counted at connect time, denied when count > limit; 0 = off.
* User limit: Carbonio counts *successful* logins after authentication. An
  admin who sets "20 per minute" expects brute force to stop, so the default
  here counts *failed* upstream logins (``count_user = "failures"``) and
  refuses further attempts once ``user_limit`` failures were seen in
  ``user_ttl``; ``count_user = "successes"`` gives Carbonio's behaviour.
* The whitelist (CIDRs, IPv4 and IPv6) skips everything: counters, blocks and
  the user throttle for attempts from that IP. Matching is done in-process,
  so Carbonio's ``whitelist:ip=`` cache key is not needed.
* One account, one user counter (security review M1): ``user_key`` keys the
  canonical form of a name (``canonical_login``: stripped, inner spaces
  collapsed, lower-cased), and callers check and count on the *account* the
  route resolved (case, spaces, aliases and a bare name qualified by the VIP
  or default domain all end up there). The typed name's key is checked before
  the route lookup (a locked name costs no lookup) and counted only for names
  that resolve to no account. How the login paths use it:

      reject = await t.check_user(typed, ip=ip)              # before routing
      ... route = <lookup>                                   # route.account or None
      reject = await t.check_user(typed, account=route.account, ip=ip)
      ... upstream login ...
      await t.count_user(typed, account=route.account if route else "",
                         success=ok, ip=ip)

* Fail-open: with memcached down every check allows (Memcache logs once).

The block index is updated read-modify-write under an ``add``-based lock key
(atomic in memcached). If the lock cannot be had in time, the update goes
ahead anyway: two admins blocking at the same instant may then leave one IP
out of the *listing* until the next change. Enforcement never depends on the
index: it reads ``block:ip=`` directly.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from typing import Final

from mypy_extensions import mypyc_attr

from carbotui.core.audit import canonical_login
from carbotui.backends.memcache import Memcache
from carbotui.services.routes import _key, escape  # _key: the same >250-byte MD5 rule as routes
# [throttle] is declared with the other settings; imported back (and re-exported) from there.
from carbotui.core.settings import (IP_REJECT, MAX_TTL, PROTO_LETTER, USER_REJECT,  # noqa: F401
                               Network, ThrottleSettings, parse_networks)

log: Final = logging.getLogger("carbotui.services.throttle")

INDEX_KEY: Final = b"blocks:index"
INDEX_LOCK: Final = b"blocks:index:lock"
INDEX_MAX: Final = 10000


# -- pure helpers --------------------------------------------------------------

def normalize_ip(text: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 becomes IPv4 (one counter, not two).
    Anything unparseable is returned as given (it is escaped before it reaches a key)."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.compressed


def whitelisted(ip: str, networks: tuple[Network, ...]) -> bool:
    """True when ``ip`` is inside one of ``networks``; also matches ::ffff:a.b.c.d
    against IPv4 networks (nginx on IPv6 sockets sees mapped addresses)."""
    if not networks:
        return False
    try:
        addr = ipaddress.ip_address(normalize_ip(ip))
    except ValueError:
        return False
    return any(addr.version == net.version and addr in net for net in networks)


def ip_key(proto: str, ip: str) -> bytes:
    return _key(f"throttle:proto={PROTO_LETTER[proto]},ip={escape(normalize_ip(ip))}")


def user_key(login: str) -> bytes:
    """The user counter of a login name or account: every spelling that
    canonical_login makes one (case, surrounding or repeated spaces) is one key."""
    return _key(f"throttle:user={escape(canonical_login(login))}")


def _user_keys(login: str, account: str) -> list[bytes]:
    """The keys that decide on a login: the account's when it is known, and the typed
    name's too when that differs (it may have been counted before the account was)."""
    keys = [user_key(account)] if account else []
    typed = user_key(login)
    if typed not in keys:
        keys.append(typed)
    return keys


def block_key(ip: str) -> bytes:
    return _key(f"block:ip={escape(normalize_ip(ip))}")


# -- blocks -------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    ip: str
    reason: str
    since: float
    until: float
    by: str = ""

    def to_json(self) -> dict:
        return {"ip": self.ip, "reason": self.reason, "since": self.since,
                "until": self.until, "by": self.by}

    @classmethod
    def from_bytes(cls, ip: str, raw: bytes) -> "Block":
        try:
            d = json.loads(raw)
            return cls(ip=ip, reason=str(d.get("reason", "")), since=float(d.get("since", 0)),
                       until=float(d.get("until", 0)), by=str(d.get("by", "")))
        except (ValueError, TypeError, AttributeError):
            return cls(ip=ip, reason="(unreadable block entry)", since=0.0, until=0.0)


@mypyc_attr(native_class=False)          # compiled (mypyc): a builtin exception's subclass
class ThrottleUnavailable(RuntimeError):
    """memcached did not store a block (it is down): say so to the admin."""


# -- the throttle -------------------------------------------------------------

class Throttle:
    EXEMPT_MEMORY = 4096          # addresses whose whitelist answer is remembered
    blocked = 0                   # check_ip answers refused because the address is blocked

    def __init__(self, memcache: Memcache, settings: ThrottleSettings):
        self.cache = memcache
        self.settings = settings

    @property
    def settings(self) -> ThrottleSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: ThrottleSettings) -> None:
        self._settings = settings
        self._exempt_known: dict[str, bool] = {}      # a new whitelist: ask again

    def exempt(self, ip: str | None) -> bool:
        """Whitelisted: never throttled. Remembered per address (bounded), since parsing
        it costs more than the rest of an accept."""
        if not ip:
            return False
        known = self._exempt_known.get(ip)
        if known is None:
            if len(self._exempt_known) >= self.EXEMPT_MEMORY:
                self._exempt_known.clear()
            known = self._exempt_known[ip] = whitelisted(ip, self._settings.whitelist)
        return known

    def counts_users(self, ip: str | None) -> bool:
        """Whether logins from ``ip`` go through check_user/count_user at all (a plain
        call: the login path skips two awaits when not)."""
        return self._settings.user_limit > 0 and not self.exempt(ip)

    async def check_ip(self, proto: str, ip: str) -> str | None:
        """At connect time: None to allow, else the reject text (then close).
        Blocks first, then the per-protocol counter (incremented here, as nginx does)."""
        s = self.settings
        if self.exempt(ip):
            return None
        found = await self.cache.get_many([block_key(ip)])
        if found:
            self.blocked += 1                 # the workers' metrics (carbotui_blocked_total)
            return s.ip_reject_message
        limit, ttl = s.ip_limit_for(proto)
        if limit <= 0:
            return None
        count = await self.cache.incr(ip_key(proto, ip), ttl)
        if count is not None and count > limit:
            log.info("ip throttle:[%s] deny [count:%d, limit:%d] %s", ip, count, limit, proto)
            return s.ip_reject_message
        return None                           # None count: memcached down, fail open

    async def check_user(self, login: str, *, ip: str | None = None,
                         account: str = "") -> str | None:
        """Check only: None to allow, else the reject text. ``login`` is the name as
        typed (keyed in its canonical form); ``account``, once the route lookup gave
        it, is the canonical account, whose counter then decides too (one round
        trip for both)."""
        s = self.settings
        if s.user_limit <= 0 or self.exempt(ip):
            return None
        keys = _user_keys(login, account)
        found = await self.cache.get_many(keys)
        try:
            count = max((int(found.get(k, b"0")) for k in keys), default=0)
        except ValueError:
            return None
        # failures: user_limit wrong passwords are answered, then refused.
        # successes (Carbonio): denied when the count already exceeds the limit.
        over = count >= s.user_limit if s.count_user == "failures" else count > s.user_limit
        return s.user_reject_message if over else None

    async def count_user(self, login: str, *, success: bool, ip: str | None = None,
                         account: str = "") -> str | None:
        """After the upstream login answered. Counts only the configured kind of
        attempt, on ``account`` (the route's canonical account) when known, else on
        the canonical form of the typed ``login``. Returns the reject text only in
        "successes" mode when this login went over the limit (Carbonio then closes
        the authenticated session); a failure is never refused here: the next
        check_user refuses."""
        s = self.settings
        if s.user_limit <= 0 or self.exempt(ip):
            return None
        if success != (s.count_user == "successes"):
            return None
        count = await self.cache.incr(user_key(account or login), s.user_ttl)
        if success and count is not None and count > s.user_limit:
            log.info("user throttle:[%r] deny [count:%d, limit:%d]", account or login, count,
                     s.user_limit)
            return s.user_reject_message
        return None

    # -- blocks ---------------------------------------------------------------
    async def block(self, ip: str, seconds: int, reason: str, *, by: str = "") -> Block:
        """Block ``ip`` for ``seconds`` on every worker of every node (replaces a block).
        Raises ValueError for a bad address or duration, ThrottleUnavailable when
        memcached is down."""
        try:
            ip = ipaddress.ip_address(normalize_ip(ip)).compressed
        except ValueError:
            raise ValueError(f"{ip!r} is not an IP address") from None
        seconds = int(seconds)
        if not 0 < seconds <= MAX_TTL:
            raise ValueError(f"block duration must be 1..{MAX_TTL} seconds, got {seconds}")
        now = time.time()
        entry = Block(ip=ip, reason=reason.replace("\n", " ")[:300], since=now,
                      until=now + seconds, by=by)
        key = block_key(ip)
        value = json.dumps(entry.to_json()).encode()
        # Memcache offers add, not set: delete + add replaces an existing block.
        await self.cache.delete(key)
        if not await self.cache.add(key, value, seconds):
            if not self.cache.available:
                raise ThrottleUnavailable("memcached is unavailable: the block was not stored")
            # Someone else blocked it in between: theirs stands, and it is listed.
        await self._update_index(add=ip)
        log.warning("blocked %s for %ds: %s", ip, seconds, entry.reason)
        return entry

    async def unblock(self, ip: str) -> bool:
        """Lift a block; True when there was one."""
        ip = normalize_ip(ip)
        gone = await self.cache.delete(block_key(ip))
        await self._update_index(remove=ip)
        if gone:
            log.warning("unblocked %s", ip)
        return gone

    async def blocks(self) -> list[Block]:
        """Current blocks, soonest expiry first. Entries that expired or were lifted
        drop out here even if the index still names them."""
        ips = await self._read_index()
        if not ips:
            return []
        keys = {block_key(ip): ip for ip in ips}
        found = await self.cache.get_many(list(keys))
        out = [Block.from_bytes(keys[k], v) for k, v in found.items()]
        return sorted(out, key=lambda b: (b.until, b.ip))

    async def _read_index(self) -> list[str]:
        raw = (await self.cache.get_many([INDEX_KEY])).get(INDEX_KEY)
        try:
            ips = json.loads(raw) if raw else []
        except ValueError:
            return []
        return [x for x in ips if isinstance(x, str)] if isinstance(ips, list) else []

    async def _update_index(self, *, add: str | None = None, remove: str | None = None):
        locked = False
        for _ in range(40):                  # up to ~2 s; the lock expires after 5 s anyway
            if await self.cache.add(INDEX_LOCK, b"1", 5):
                locked = True
                break
            if not self.cache.available:
                return
            await asyncio.sleep(0.05)
        try:
            ips = await self._read_index()
            # Prune what no longer exists so the index does not grow forever.
            live = await self.cache.get_many([block_key(ip) for ip in ips]) if ips else {}
            keep = [ip for ip in ips if block_key(ip) in live and ip != remove]
            if add and add not in keep:
                keep.append(add)
            keep = keep[-INDEX_MAX:]
            await self.cache.delete(INDEX_KEY)
            await self.cache.add(INDEX_KEY, json.dumps(keep).encode(), 0)
        finally:
            if locked:
                await self.cache.delete(INDEX_LOCK)
