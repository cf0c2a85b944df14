"""The throttle, the blocks and the router's memories, over an in-memory memcached.

Run compiled (mypyc: setup.py MYPYC_MODULES) and with CARBOTUI_PURE=1: the attacker's
side (blocks, the IP counter, the user counter, the negative cache, a poisoned cached
route) must hold the same both ways.
"""
from __future__ import annotations

import asyncio

import pytest

from carbotui.backends.directory import Account, MailServer
from carbotui.backends.memcache import Memcache
from carbotui.core.settings import ThrottleSettings
from carbotui.services import routes, throttle
from carbotui.services.routes import Router, RouteError
from carbotui.services.throttle import Throttle, ThrottleUnavailable


class DictCache(Memcache):
    """Memcache's interface over a dict (no TTLs); ``up`` False: as memcached down."""

    def __init__(self) -> None:
        super().__init__((), timeout=1.0, reconnect=1.0)
        self.servers = [None]            # "configured": the router asks it
        self.data: dict[bytes, bytes] = {}
        self.up = True
        self.calls = 0

    @property
    def available(self) -> bool:
        return self.up

    async def get_many(self, keys):
        self.calls += 1
        return {k: self.data[k] for k in keys if k in self.data} if self.up else {}

    async def add(self, key, value, ttl):
        self.calls += 1
        if not self.up or key in self.data:
            return False
        self.data[key] = value
        return True

    async def delete(self, key):
        self.calls += 1
        return self.up and self.data.pop(key, None) is not None

    async def incr(self, key, ttl):
        self.calls += 1
        if not self.up:
            return None
        n = int(self.data.get(key, b"0")) + 1
        self.data[key] = str(n).encode()
        return n


def run(coro):
    return asyncio.run(coro)


def settings(**table) -> ThrottleSettings:
    return ThrottleSettings.from_table(table)


def test_the_compiled_modules_are_what_runs_unless_pure():
    import os
    compiled = routes.__file__.endswith(".so") and throttle.__file__.endswith(".so")
    if os.environ.get("CARBOTUI_PURE") == "1":
        assert not compiled
    else:
        # the build compiles them (make compiled); a stale .so falls back to both .py
        assert compiled or routes.__file__.endswith(".py") and throttle.__file__.endswith(".py")


def test_a_blocked_address_is_refused_in_every_spelling():
    cache = DictCache()
    t = Throttle(cache, settings())
    block = run(t.block("::ffff:192.0.2.7", 60, "brute\nforce", by="admin"))
    assert block.ip == "192.0.2.7" and block.reason == "brute force"
    for ip in ("192.0.2.7", "::ffff:192.0.2.7", "[::ffff:192.0.2.7]"):
        assert run(t.check_ip("imap", ip)) == t.settings.ip_reject_message
    assert run(t.check_ip("imap", "192.0.2.8")) is None
    assert t.blocked == 3
    assert [b.ip for b in run(t.blocks())] == ["192.0.2.7"]
    assert run(t.unblock("192.0.2.7")) is True
    assert run(t.check_ip("imap", "192.0.2.7")) is None
    assert run(t.blocks()) == []


def test_block_refuses_bad_input_and_says_when_memcached_is_down():
    cache = DictCache()
    t = Throttle(cache, settings())
    with pytest.raises(ValueError):
        run(t.block("not an address\r\n", 60, "x"))
    with pytest.raises(ValueError):
        run(t.block("192.0.2.1", 0, "x"))
    cache.up = False
    with pytest.raises(ThrottleUnavailable):
        run(t.block("192.0.2.1", 60, "x"))
    assert isinstance(ThrottleUnavailable("x"), RuntimeError)


def test_the_ip_limit_denies_past_it_per_protocol():
    t = Throttle(DictCache(), settings(ip_limit=3, imap_ip_limit=2))
    answers = [run(t.check_ip("imap", "198.51.100.1")) for _ in range(3)]
    assert answers == [None, None, t.settings.ip_reject_message]
    # pop3 uses the general limit, its own counter
    answers = [run(t.check_ip("pop3", "198.51.100.1")) for _ in range(4)]
    assert answers == [None, None, None, t.settings.ip_reject_message]


def test_the_whitelist_skips_everything_and_follows_a_new_whitelist():
    cache = DictCache()
    t = Throttle(cache, settings(ip_limit=1, user_limit=1, whitelist=["10.0.0.0/8", "2001:db8::/32"]))
    for ip in ("10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1"):
        assert t.exempt(ip) and not t.counts_users(ip)
        for _ in range(3):
            assert run(t.check_ip("imap", ip)) is None
    assert not t.exempt("11.1.2.3") and t.counts_users("11.1.2.3")
    assert not t.exempt("") and not t.exempt(None) and not t.exempt("garbage\r\n")
    t.settings = settings(ip_limit=1)                # SIGHUP: no whitelist any more
    assert not t.exempt("10.1.2.3")
    assert run(t.check_ip("imap", "10.1.2.3")) is None
    assert run(t.check_ip("imap", "10.1.2.3")) == t.settings.ip_reject_message


def test_the_exempt_memory_is_bounded():
    t = Throttle(DictCache(), settings(whitelist=["10.0.0.0/8"]))
    for i in range(t.EXEMPT_MEMORY + 10):
        assert t.exempt(f"10.0.{i // 256 % 256}.{i % 256}")
    assert len(t._exempt_known) <= t.EXEMPT_MEMORY


def test_failed_logins_lock_the_account_in_every_spelling():
    t = Throttle(DictCache(), settings(user_limit=2))
    ip = "203.0.113.9"
    assert run(t.check_user("Bob@Example.com", ip=ip)) is None
    for _ in range(2):
        assert run(t.count_user("bob@example.com", success=False, ip=ip)) is None
    for typed in ("bob@example.com", " BOB@example.COM ", "bob@example.com"):
        assert run(t.check_user(typed, ip=ip)) == t.settings.user_reject_message
    # an alias that resolves to the locked account is refused on the account's counter
    assert run(t.check_user("alias@example.com", ip=ip)) is None
    assert run(t.check_user("alias@example.com", ip=ip, account="bob@example.com")) \
        == t.settings.user_reject_message
    # successes are not counted in failures mode
    assert run(t.count_user("carol@example.com", success=True, ip=ip)) is None
    assert run(t.check_user("carol@example.com", ip=ip)) is None


def test_successes_mode_refuses_past_the_limit():
    t = Throttle(DictCache(), settings(user_limit=1, count_user="successes"))
    assert run(t.count_user("dave@example.com", success=True)) is None
    assert run(t.count_user("dave@example.com", success=True)) == t.settings.user_reject_message
    assert run(t.check_user("dave@example.com")) == t.settings.user_reject_message


def test_memcached_down_fails_open():
    cache = DictCache()
    cache.up = False
    t = Throttle(cache, settings(ip_limit=1, user_limit=1))
    for _ in range(3):
        assert run(t.check_ip("imap", "192.0.2.1")) is None
        assert run(t.check_user("eve@example.com")) is None
        assert run(t.count_user("eve@example.com", success=False)) is None


def test_a_garbled_counter_allows():
    cache = DictCache()
    t = Throttle(cache, settings(user_limit=1))
    cache.data[throttle.user_key("frank@example.com")] = b"not a number"
    assert run(t.check_user("frank@example.com")) is None


# -- the router ---------------------------------------------------------------------

SERVER = MailServer("mbox1.example.com", "192.0.2.50", {"imap": 143, "pop3": 110})


class FakeDirectory:
    def __init__(self, accounts):
        self.accounts = accounts
        self.searches = 0
        self.down = False

    def servers(self):
        return {SERVER.hostname: SERVER}

    def qualify(self, login, local_ip):
        return login if "@" in login else f"{login}@example.com"

    def find_account(self, name):
        from carbotui.backends.directory import DirectoryUnavailable
        self.searches += 1
        if self.down:
            raise DirectoryUnavailable("ldap down")
        return self.accounts.get(name)


def router(accounts=None, cache=None):
    accounts = accounts or {"bob@example.com": Account("bob@example.com", "id-1",
                                                       SERVER.hostname)}
    return Router(FakeDirectory(accounts), cache or DictCache(), ttl=60)  # type: ignore[arg-type]


def test_route_then_recent_route_without_a_lookup():
    r = router()
    assert r.recent_mail_route("Bob@Example.com", "imap", "192.0.2.1") is None
    route = run(r.route_mail("Bob@Example.com", "imap", "192.0.2.1"))
    assert (route.account, route.address, route.port, route.cached) == \
        ("bob@example.com", "192.0.2.50", 143, False)
    assert route.short_name == SERVER.short_name == SERVER.hostname.split(".")[0]
    assert r.directory.searches == 1
    again = r.recent_mail_route("BOB@example.com", "imap", "192.0.2.1")
    assert again is route and r.hits == 1
    # another protocol or local address: not the same memory
    assert r.recent_mail_route("bob@example.com", "pop3", "192.0.2.1") is None
    assert r.recent_mail_route("bob@example.com", "imap", "192.0.2.2") is None
    # the route went to memcached: a fresh worker finds it there, no LDAP
    r2 = router(cache=r.cache)
    cached = run(r2.route_mail("bob@example.com", "imap", "192.0.2.1"))
    assert cached.cached and cached.port == 143 and r2.directory.searches == 0
    assert cached.short_name == SERVER.short_name
    # a failed login forgets it
    run(r.forget("bob@example.com", "imap", "192.0.2.1", "bob@example.com"))
    assert r.recent_mail_route("bob@example.com", "imap", "192.0.2.1") is None


def test_the_local_ttl_is_read_from_the_class(monkeypatch):
    # bench/quiet_worker.py sets Router.LOCAL_TTL on the class: compiled code reads it too
    monkeypatch.setattr(Router, "LOCAL_TTL", -1.0)
    r = router()
    assert run(r.route_mail("bob@example.com", "imap", "192.0.2.1")) is not None
    assert r.recent_mail_route("bob@example.com", "imap", "192.0.2.1") is None   # expired


def test_an_unknown_name_is_remembered_missing():
    r = router()
    for _ in range(5):
        assert run(r.route_mail("nobody@example.com", "imap", "192.0.2.1")) is None
    assert r.directory.searches == 1 and r.negative_hits == 4


def test_a_poisoned_cached_route_is_ignored_and_deleted():
    cache = DictCache()
    r = router(cache=cache)
    key = routes.route_key("imap", "bob@example.com")
    cache.data[key] = b"6.6.6.6:143\r\nset x"
    route = run(r.route_mail("bob@example.com", "imap", "192.0.2.1"))
    assert route.address == "192.0.2.50" and r.poisoned == 1
    assert cache.data[key] == b"192.0.2.50:143"


def test_ldap_down_is_a_route_error():
    r = router()
    r.directory.down = True
    with pytest.raises(RouteError, match="ldap down"):
        run(r.route_mail("bob@example.com", "imap", "192.0.2.1"))
    assert isinstance(RouteError("x"), RuntimeError)
