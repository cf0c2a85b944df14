"""Review L4: unauthenticated LDAP amplification through route lookups of unknown names.

Against the demo's slapd and memcached: a name (or zimbraId) LDAP found no account for
is answered from a short per-worker negative cache, so repeating it costs no further
search; before, every repeat cost 1-3 searches behind the worker's one LDAP lock.
Real accounts route exactly as before.
"""
from __future__ import annotations

import asyncio
import secrets
import uuid

from carbotui.backends.directory import Directory
from carbotui.backends.memcache import Memcache
from carbotui.services.routes import Router

from .conftest import SETTINGS

N = 50


def router() -> Router:
    cache = Memcache(SETTINGS.memcached_servers, timeout=1, reconnect=1)
    return Router(Directory(SETTINGS), cache, ttl=60)


def run(r: Router, coro):
    async def go():
        try:
            return await coro
        finally:
            await r.cache.close()
            r.directory.close()
    return asyncio.run(go())


def test_repeating_an_unknown_name_costs_one_ldap_search():
    r = router()
    name = f"nobody{secrets.token_hex(4)}@demo.test"

    async def go():
        answers = [await r.route_mail(name, "imap", "127.0.0.1") for _ in range(N)]
        # the same name in other spellings and protocols is the same miss
        answers += [await r.route_mail(name.upper(), p, "127.0.0.1") for p in ("pop3", "http")]
        return answers, r.directory.searches

    answers, searches = run(r, go())
    assert answers == [None] * (N + 2)
    assert searches == 1


def test_random_bare_names_cost_one_search_each_not_three():
    r = router()

    async def go():
        await r.route_mail(f"nobody{secrets.token_hex(4)}", "imap", "127.0.0.1")
        first = r.directory.searches          # VIP domain + default domain + the account
        for _ in range(10):
            assert await r.route_mail(f"nobody{secrets.token_hex(4)}", "imap",
                                      "127.0.0.1") is None
        return first, r.directory.searches - first

    first, rest = run(r, go())
    assert first <= 3 and rest == 10


def test_an_unknown_auth_token_id_costs_one_ldap_search():
    r = router()
    zimbra_id = str(uuid.uuid4())

    async def go():
        answers = [await r.route_by_id(zimbra_id, "http") for _ in range(N)]
        return answers, r.directory.searches

    answers, searches = run(r, go())
    assert answers == [None] * N
    assert searches == 1


def test_real_accounts_route_as_before_and_a_miss_is_forgotten_after_its_ttl():
    r = router()
    r.NEGATIVE_TTL = 0.2
    name = f"nobody{secrets.token_hex(4)}@demo.test"

    async def go():
        routes = [await r.route_mail(login, "imap", "127.0.0.1")
                  for login in ("user01@demo.test", "user02", "nick01@demo.test")]
        assert await r.route_mail(name, "imap", "127.0.0.1") is None
        before = r.directory.searches
        assert await r.route_mail(name, "imap", "127.0.0.1") is None
        cached = r.directory.searches == before
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while r.directory.searches == before and loop.time() < deadline:
            assert await r.route_mail(name, "imap", "127.0.0.1") is None
            await asyncio.sleep(0.05)
        return routes, cached, r.directory.searches - before

    routes, cached, searched_again = run(r, go())
    assert [(x.account, x.server.hostname) for x in routes] == [
        ("user01@demo.test", "mbox1.demo.test"), ("user02@demo.test", "mbox2.demo.test"),
        ("user01@demo.test", "mbox1.demo.test")]
    assert cached and searched_again == 1


def test_the_negative_cache_is_bounded():
    r = router()
    r.NEGATIVE_MAX = 20

    async def go():
        for i in range(60):
            await r.route_mail(f"nobody{secrets.token_hex(4)}@demo.test", "imap", "127.0.0.1")
        return len(r._negative)

    assert run(r, go()) == 20
