"""The review's L9 attack: anyone who can write memcached poisons `fleet:index`.

Before the fix, an index entry memcached refuses as a key (``"a b"``) made every
worker's next publish raise a client-side validation error, which marked memcached
down on every worker, every 3 s: blocks, throttles and the route cache off fleet-wide
for as long as the value stayed. Now entries are validated (and refused keys are
never sent), so nothing is turned off and a garbage index is simply rewritten.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from carbotui.services import nodes
from carbotui.backends.memcache import Memcache

from .conftest import (HOST, PORTS, SETTINGS, throttle_call, tls_context, wait_for,
                       worker_stats)

BLOCKED = "127.0.0.28"
POISONS = [
    b'["a b"]',
    b'["fleet:member:x\\r\\ndelete blocks:index", "a b", 7, null, {"k": 1}]',
    b"not json at all",
]

pytestmark = pytest.mark.usefixtures("proxy_up", "memcached_in_use")


def _greeted(source: str) -> bool:
    raw = socket.socket()
    raw.settimeout(5)
    raw.bind((source, 0))
    raw.connect((HOST, PORTS["imaps"]))
    with tls_context().wrap_socket(raw, server_hostname=HOST) as sock:
        try:
            return sock.recv(200).startswith(b"* OK")
        except OSError:
            return False


def _published_since(memcached, since: float) -> bool:
    """Every worker published its summary after `since` (so it read the index)."""
    for s in worker_stats():
        raw = memcached.get(nodes.member_key(SETTINGS.node_id, s["worker"]))
        if raw is None or json.loads(raw)["time"] <= since:
            return False
    return True


@pytest.mark.parametrize("poison", POISONS, ids=["space", "mixed", "garbage"])
def test_a_poisoned_fleet_index_turns_nothing_off(memcached, poison):
    saved, value = memcached.get(nodes.INDEX), None
    before = {s["pid"]: s["cache"]["memcached_errors"] for s in worker_stats()}
    throttle_call("block", BLOCKED, 600, "test_fleet_poison")
    try:
        # "mixed" keeps the real members listed, so no worker needs to rewrite it; the
        # others list none of them, so the next publish replaces the value.
        mixed = poison == POISONS[1]
        members = json.loads(saved) if saved else []
        value = json.dumps(members + json.loads(poison)).encode() if mixed else poison
        poisoned_at = time.time()
        memcached.set(nodes.INDEX, value, 0)
        wait_for(lambda: _published_since(memcached, poisoned_at)
                 and (mixed or memcached.get(nodes.INDEX) != value),
                 15, what="every worker publishing after the poison")
        after = worker_stats()
        assert all(s["cache"]["memcached_available"] for s in after)
        assert {s["pid"]: s["cache"]["memcached_errors"] for s in after if s["pid"] in before} \
            == {p: n for p, n in before.items() if p in {s["pid"] for s in after}}
        assert not _greeted(BLOCKED)                 # blocks still apply
        # and the index lists every worker again (two rewriting at once may drop one
        # for a period: it re-adds itself on its next publish)
        wanted = {nodes.member_key(SETTINGS.node_id, s["worker"]).decode() for s in after}
        wait_for(lambda: wanted <= set(nodes._members_of(memcached.get(nodes.INDEX) or b"[]")),
                 10, what="every worker listed in fleet:index")
    finally:
        throttle_call("unblock", BLOCKED)
        if saved is not None and memcached.get(nodes.INDEX) == value:
            memcached.set(nodes.INDEX, saved, 0)


def test_the_fleet_view_reads_past_a_poisoned_index(memcached):
    saved = memcached.get(nodes.INDEX)
    try:
        members = json.loads(saved) if saved else []
        memcached.set(nodes.INDEX, json.dumps(["a b", "blocks:index", *members]).encode(), 0)

        async def read():
            cache = Memcache(SETTINGS.memcached_servers, timeout=1, reconnect=1)
            try:
                return await nodes.members(cache), cache.available, cache.errors
            finally:
                await cache.close()
        found, available, errors = asyncio.run(read())
        assert (available, errors) == (True, 0)
        assert {m["worker"] for m in found} >= {s["worker"] for s in worker_stats()}
    finally:
        if saved is not None:
            memcached.set(nodes.INDEX, saved, 0)
