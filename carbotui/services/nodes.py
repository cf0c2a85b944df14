"""The fleet: every worker of every node that shares this memcached.

Each worker publishes a small summary of itself every few seconds
(workers/stats.publish_forever) under ``fleet:member:<node id>/<worker>``
(expires when the worker stops publishing), and keeps its key listed in
``fleet:index``. memcached cannot list keys, so the index is a JSON list
updated with a short ``add`` lock; a racing update can drop a member for one
period, and it re-adds itself on its next publish. Readers skip listed members
whose key has expired.
"""
from __future__ import annotations

import json
import re

from carbotui.backends.memcache import Memcache
from carbotui.services.routes import escape

INDEX = b"fleet:index"
LOCK = b"fleet:index:lock"
PUBLISH_EVERY = 3.0
MEMBER_TTL = 10
MAX_MEMBERS = 256


def member_key(node: str, worker: str) -> bytes:
    return f"fleet:member:{escape(node)}/{escape(worker)}".encode()


# What member_key() makes: escaped names only, within memcached's 250 bytes.
_MEMBER = re.compile(r"(?=.{1,250}\Z)fleet:member:[A-Za-z0-9.@_+%\-]+/[A-Za-z0-9.@_+%\-]+")


def _members_of(raw: bytes) -> list[str]:
    """The member keys a stored index lists. Anyone who can write memcached can write
    this value, so only entries shaped like member_key() count (at most MAX_MEMBERS,
    each once); anything else is as good as an empty index, which the next publish
    rewrites."""
    try:
        members = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    if not isinstance(members, list):
        return []
    valid = dict.fromkeys(m for m in members if isinstance(m, str) and _MEMBER.fullmatch(m))
    return list(valid)[:MAX_MEMBERS]


async def _index(cache: Memcache) -> list[str]:
    found = await cache.get_many([INDEX])
    return _members_of(found.get(INDEX, b"[]"))


async def publish(cache: Memcache, node: str, worker: str, summary: dict) -> None:
    key = member_key(node, worker)
    await cache.delete(key)                  # Memcache has add, not set: replace
    await cache.add(key, json.dumps(summary).encode(), MEMBER_TTL)
    members = await _index(cache)
    if key.decode() in members:
        return
    if not await cache.add(LOCK, b"1", 2):   # someone else is updating: next time
        return
    try:
        members = await _index(cache)
        alive = await cache.get_many([m.encode() for m in members]) if members else {}
        members = [m for m in members if m.encode() in alive] + [key.decode()]
        await cache.delete(INDEX)
        await cache.add(INDEX, json.dumps(members[-MAX_MEMBERS:]).encode(), 0)
    finally:
        await cache.delete(LOCK)


async def members(cache: Memcache) -> list[dict]:
    """Every live member's summary, sorted by node then worker."""
    keys = await _index(cache)
    if not keys:
        return []
    found = await cache.get_many([k.encode() for k in keys])
    out = []
    for value in found.values():
        try:
            member = json.loads(value)
        except (ValueError, RecursionError):
            continue
        if isinstance(member, dict):
            out.append(member)
    return sorted(out, key=lambda m: (str(m.get("node", "")), str(m.get("worker", ""))))
