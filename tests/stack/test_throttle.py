"""Throttle against the demo's real memcached (127.0.0.1:12211).

Every test uses fresh random documentation addresses and logins, so runs do
not collide with each other or with the live demo workers.
"""
from __future__ import annotations

import asyncio
import ipaddress
import secrets

import pytest

from carbotui.core.settings import Endpoint
from carbotui.backends.memcache import Memcache
from carbotui.services.throttle import (IP_REJECT, USER_REJECT, Throttle, ThrottleSettings,
                               ThrottleUnavailable, user_key)

from .conftest import SETTINGS


def fresh_ip() -> str:
    """A random documentation address, in canonical form (as Throttle stores it)."""
    return ipaddress.ip_address(f"2001:db8:{secrets.token_hex(2)}::{secrets.token_hex(2)}"
                                ).compressed


def fresh_login() -> str:
    return f"t{secrets.token_hex(4)}@demo.test"


def memcache(servers=None) -> Memcache:
    return Memcache(servers or SETTINGS.memcached_servers, timeout=0.5, reconnect=5)


def run(coro):
    return asyncio.run(coro)


def test_two_workers_share_one_ip_count():
    settings = ThrottleSettings.from_table({"imap_ip_limit": 5, "imap_ip_ttl": 60})
    ip = fresh_ip()

    async def go():
        a, b = Throttle(memcache(), settings), Throttle(memcache(), settings)
        answers = []
        for i in range(6):
            answers.append(await (a if i % 2 else b).check_ip("imap", ip))
        other_proto = await a.check_ip("pop3", ip)     # pop3 has no limit here
        await a.cache.close(), await b.cache.close()
        return answers, other_proto

    answers, other = run(go())
    assert answers == [None] * 5 + [IP_REJECT]
    assert other is None


def test_whitelisted_ip_is_never_throttled_or_blocked():
    ip = fresh_ip().replace("2001:db8:", "2001:db8:ffff:", 1)
    settings = ThrottleSettings.from_table({
        "ip_limit": 1, "ip_ttl": 60, "user_limit": 1, "user_ttl": 60,
        "whitelist": ["10.0.0.0/8", "2001:db8:ffff::/48"]})
    login = fresh_login()

    async def go():
        t = Throttle(memcache(), settings)
        try:
            await t.block(ip, 60, "test")
            ip_answers = [await t.check_ip("imaps", ip) for _ in range(5)]
            for _ in range(3):
                await t.count_user(login, success=False, ip=ip)
            user_answer = await t.check_user(login, ip=ip)
            # the same login from elsewhere was never counted either
            other = await t.check_user(login, ip=fresh_ip())
        finally:
            await t.unblock(ip)
            await t.cache.close()
        return ip_answers, user_answer, other

    ip_answers, user_answer, other = run(go())
    assert ip_answers == [None] * 5
    assert user_answer is None and other is None


def test_user_failures_then_refused_and_success_not_counted():
    settings = ThrottleSettings.from_table({"user_limit": 3, "user_ttl": 60})
    login = fresh_login()

    async def go():
        a, b = Throttle(memcache(), settings), Throttle(memcache(), settings)
        seen = []
        for i in range(3):
            seen.append(await a.check_user(login))
            await a.count_user(login, success=True)   # successes do not count here
            await (a if i % 2 else b).count_user(login, success=False)
        seen.append(await b.check_user(login.upper()))  # escape() lower-cases
        await a.cache.close(), await b.cache.close()
        return seen

    assert run(go()) == [None, None, None, USER_REJECT]


def test_carbonio_mode_counts_successes():
    settings = ThrottleSettings.from_table({"user_limit": 2, "user_ttl": 60,
                                            "count_user": "successes"})
    login = fresh_login()

    async def go():
        t = Throttle(memcache(), settings)
        out = [await t.count_user(login, success=True) for _ in range(3)]
        out.append(await t.check_user(login))
        await t.cache.close()
        return out

    assert run(go()) == [None, None, USER_REJECT, USER_REJECT]


def test_block_list_and_lift_seen_by_every_instance():
    ip = fresh_ip()
    settings = ThrottleSettings()           # no limits at all: only the block refuses

    async def go():
        a, b = Throttle(memcache(), settings), Throttle(memcache(), settings)
        try:
            before = await b.check_ip("https", ip)
            entry = await a.block(ip.upper(), 120, "brute force", by="test")
            during = await b.check_ip("imap", ip)
            listed = [x for x in await b.blocks() if x.ip == ip]
            lifted = await b.unblock(ip)
            after = await a.check_ip("imap", ip)
            listed_after = [x for x in await a.blocks() if x.ip == ip]
        finally:
            await a.unblock(ip)
            await a.cache.close(), await b.cache.close()
        return before, entry, during, listed, lifted, after, listed_after

    before, entry, during, listed, lifted, after, listed_after = run(go())
    assert before is None and during == IP_REJECT and after is None
    assert entry.ip == ip and 119 <= entry.until - entry.since <= 120
    assert len(listed) == 1 and listed[0].reason == "brute force" and listed[0].by == "test"
    assert lifted and listed_after == []


def test_memcached_down_fails_open_and_block_says_so():
    dead = (Endpoint("127.0.0.1", 1),)       # nothing listens on port 1
    settings = ThrottleSettings.from_table({"ip_limit": 1, "ip_ttl": 60,
                                            "user_limit": 1, "user_ttl": 60})

    async def go():
        t = Throttle(memcache(dead), settings)
        answers = [await t.check_ip("imap", "192.0.2.1") for _ in range(3)]
        await t.count_user("x@demo.test", success=False)
        answers.append(await t.check_user("x@demo.test"))
        with pytest.raises(ThrottleUnavailable):
            await t.block("192.0.2.1", 60, "x")
        await t.cache.close()
        return answers

    assert run(go()) == [None] * 4


def test_bad_block_arguments():
    async def go():
        t = Throttle(memcache(), ThrottleSettings())
        try:
            with pytest.raises(ValueError, match="not an IP"):
                await t.block("10.0.0.1\r\nflush_all", 60, "x")
            with pytest.raises(ValueError, match="duration"):
                await t.block("192.0.2.1", 0, "x")
        finally:
            await t.cache.close()

    run(go())


def test_user_counter_is_the_canonical_account_whatever_the_spelling():
    """M1: case and spaces are one key; an alias or bare name is checked and counted on
    the account its route resolved (``account=``), in one round trip with the typed key."""
    settings = ThrottleSettings.from_table({"user_limit": 3, "user_ttl": 60})
    account = fresh_login()
    alias = "alias-" + account

    async def go():
        t = Throttle(memcache(), settings)
        try:
            await t.count_user(f"  {account.upper()} ", success=False)
            await t.count_user(alias, account=account, success=False)
            await t.count_user(account.split("@")[0], account=account, success=False)
            return (await t.check_user(account), await t.check_user(f"{account} "),
                    await t.check_user(alias), await t.check_user(alias, account=account),
                    await t.cache.get_many([user_key(account), user_key(alias)]))
        finally:
            await t.cache.delete(user_key(account))
            await t.cache.close()

    direct, spaced, alias_alone, alias_routed, stored = run(go())
    assert direct == spaced == alias_routed == USER_REJECT
    assert alias_alone is None            # the alias' own key was never counted ...
    assert stored == {user_key(account): b"3"}   # ... everything went to the account
