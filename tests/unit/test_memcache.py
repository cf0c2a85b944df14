"""carbotui.backends.memcache against a real memcached of its own (started here on a free port).

What the review's H1 and L9 attacks needed: a request cancelled while it waits
(a client that hung up mid-check) and a key memcached refuses (read from a poisoned
value). Neither may shift replies between requests or mark the server down. A peer
that closes mid-reply or answers nonsense is played by a tiny TCP server: real
memcached does neither on demand.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time

import pytest

from carbotui.services import nodes
from carbotui.core.settings import Endpoint
from carbotui.backends.memcache import Memcache

MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"
HANG = 5.0        # a call still running after this long hangs (the timeouts tested are 0.3 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Private:
    def __init__(self):
        self.port = _free_port()
        user = ["-u", "memcache"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen([MEMCACHED, "-l", "127.0.0.1", "-p", str(self.port),
                                      "-U", "0", "-m", "16", *user])
        _wait_port(self.port)
        self.endpoint = Endpoint("127.0.0.1", self.port)

    def stop(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture(scope="module")
def server():
    if not os.path.exists(MEMCACHED):
        pytest.skip("memcached is not installed")
    s = Private()
    yield s
    s.stop()


def cache(endpoint, timeout=0.5, reconnect=5.0) -> Memcache:
    return Memcache((endpoint,), timeout=timeout, reconnect=reconnect)


def key(name: str) -> bytes:
    return f"t{secrets.token_hex(4)}:{name}".encode()


def test_cancelled_requests_never_shift_replies(server):
    """H1: a request whose caller is cancelled while it waits (the session's client sent
    RST) must not leave its reply for the next request on that connection."""
    async def go():
        m = cache(server.endpoint)
        a, b = key("a"), key("b")
        assert await m.add(a, b"A", 60) and await m.add(b, b"B", 60)
        wrong = 0
        for _ in range(300):
            waiting = asyncio.ensure_future(m.get_many([a]))
            await asyncio.sleep(0)                 # the request is out; now wait for it
            waiting.cancel()
            wrong += await m.get_many([b]) != {b: b"B"}
        counter = key("n")
        for i in range(1, 51):
            waiting = asyncio.ensure_future(m.incr(key("other"), 60))
            await asyncio.sleep(0)
            waiting.cancel()
            wrong += await m.incr(counter, 60) != i
        errors, available = m.errors, m.available
        await m.close()
        return wrong, errors, available

    assert run(go()) == (0, 0, True)


def test_many_callers_cancelled_at_random_all_others_answered_right(server):
    async def go():
        m = cache(server.endpoint)
        keys = [key(str(i)) for i in range(40)]
        for i, k in enumerate(keys):
            assert await m.add(k, b"v%d" % i, 60)
        rng = random.Random(12)
        wrong = 0
        for _ in range(20):
            picks = [rng.randrange(len(keys)) for _ in range(60)]
            tasks = [asyncio.ensure_future(m.get_many([keys[i]])) for i in picks]
            await asyncio.sleep(0)
            for t in tasks:
                if rng.random() < 0.5:
                    t.cancel()
            for i, t in zip(picks, tasks):
                try:
                    wrong += await t != {keys[i]: b"v%d" % i}
                except asyncio.CancelledError:
                    pass
        errors, available = m.errors, m.available
        await m.close()
        return wrong, errors, available

    assert run(go()) == (0, 0, True)


def test_keys_memcached_refuses_are_misses_not_an_outage(server):
    """L9: one bad key (e.g. from a poisoned fleet:index) must turn nothing off."""
    async def go():
        m = cache(server.endpoint)
        good = key("good")
        await m.add(good, b"G", 60)
        found = await m.get_many([b"a b", b"", b"x" * 251, b"a\r\nb", "text", b"\xc3\xa9",
                                  good, good])
        stored = await m.add(b"a b", b"1", 60)
        counted = await m.incr(b"a\nb", 60)
        deleted = await m.delete(b"")
        after = await m.get_many([good])
        state = m.errors, m.available
        await m.close()
        return good, found, stored, counted, deleted, after, state

    good, found, stored, counted, deleted, after, state = run(go())
    assert found == after == {good: b"G"}
    assert (stored, counted, deleted) == (False, None, False)
    assert state == (0, True)


@pytest.mark.parametrize("poison", [b'["a b"]', b'["x\\r\\ny", "a b", "a b", 7]', b"[[[[",
                                    b'{"a": 1}'])
def test_a_poisoned_fleet_index_is_rewritten_not_an_outage(server, poison):
    """L9: nodes.publish over a fleet:index anyone could have written."""
    async def go():
        m = cache(server.endpoint)
        assert await m.add(nodes.INDEX, poison, 0)
        try:
            await nodes.publish(m, "node-1", "proxy_00", {"node": "node-1", "worker": "proxy_00"})
            listed = await m.get_many([nodes.INDEX])
            members = await nodes.members(m)
        finally:
            await m.delete(nodes.INDEX)
        state = m.available, m.errors
        await m.close()
        return listed, members, state

    listed, members, state = run(go())
    assert state == (True, 0)
    assert json.loads(listed[nodes.INDEX]) == [nodes.member_key("node-1", "proxy_00").decode()]
    assert members == [{"node": "node-1", "worker": "proxy_00"}]


def test_values_are_length_delimited(server):
    """A value holding protocol text, or big enough to arrive in pieces, is one value."""
    async def go():
        m = cache(server.endpoint)
        tricky, big, after = key("tricky"), key("big"), key("after")
        await m.add(tricky, b"x\r\nEND\r\nVALUE k 0 1\r\n", 60)
        await m.add(big, bytes(range(256)) * 2000, 60)
        await m.add(after, b"ok", 60)
        got = await m.get_many([tricky, big, after])
        await m.close()
        return tricky, big, after, got

    tricky, big, after, got = run(go())
    assert got == {tricky: b"x\r\nEND\r\nVALUE k 0 1\r\n", big: bytes(range(256)) * 2000,
                   after: b"ok"}


def test_incr_creates_then_counts(server):
    async def go():
        m = cache(server.endpoint)
        k = key("count")
        values = [await m.incr(k, 60) for _ in range(3)]
        values += await asyncio.gather(*(m.incr(k, 60) for _ in range(20)))
        stats = await m.stats()
        await m.close()
        return values, stats

    values, stats = run(go())
    assert values[:3] == [1, 2, 3] and sorted(values[3:]) == list(range(4, 24))
    assert b"pid" in stats[str(server.endpoint)]


def test_timeout_marks_down_and_recovers_in_step(server):
    """A stopped memcached: the call is a miss after `timeout`, the server is skipped,
    and after it answers again no late reply is read as another request's answer."""
    async def go():
        m = cache(server.endpoint, timeout=0.3, reconnect=0.2)
        a, b = key("a"), key("b")
        await m.add(a, b"A", 60), await m.add(b, b"B", 60)
        server.proc.send_signal(signal.SIGSTOP)
        try:
            # A stopped server never answers: only the timeout can end the call (within
            # HANG, far above 0.3 s, or this fails as a hang, not on a loaded machine).
            missed = await asyncio.wait_for(m.get_many([a]), HANG)
            down = not m.available
        finally:
            server.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 5
        while not m.available and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        answers = [await m.get_many([b]) for _ in range(5)]
        await m.close()
        return b, missed, down, answers, m.errors

    b, missed, down, answers, errors = run(go())
    assert missed == {} and down
    assert answers == [{b: b"B"}] * 5
    assert errors == 1


class FakePeer:
    """A TCP peer that answers every request line with `reply`, or closes (None)."""

    def __init__(self, reply: bytes | None):
        self.reply = reply

    async def handle(self, reader, writer):
        while await reader.readline():
            if self.reply is None:            # close in the middle of the exchange
                writer.close()
                return
            writer.write(self.reply)
            await writer.drain()

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return Endpoint("127.0.0.1", self.server.sockets[0].getsockname()[1])


def test_server_closing_mid_exchange_is_an_outage_not_a_hang():
    """aiomcache 0.8 spun for ever (no await) on readline() at EOF in every simple command."""
    async def go():
        peer = FakePeer(None)
        # A timeout far beyond HANG: the outage must be seen from the EOF itself.
        m = cache(await peer.start(), timeout=10 * HANG)
        stored = await asyncio.wait_for(m.add(b"k", b"v", 10), HANG)
        counted = await asyncio.wait_for(m.incr(b"c", 10), HANG)
        await m.close()
        peer.server.close()
        return stored, counted, m.available, m.errors

    stored, counted, available, errors = run(go())
    assert (stored, counted) == (False, None)
    assert not available and errors == 1


def test_an_unexpected_answer_is_a_miss_and_the_server_stays_in_use():
    async def go():
        peer = FakePeer(b"BOGUS\r\n")
        m = cache(await peer.start())
        found = await m.get_many([b"k"])
        stored = await m.add(b"k", b"v", 10)
        state = m.available, m.errors
        await m.close()
        peer.server.close()
        return found, stored, state

    assert run(go()) == ({}, False, (True, 2))


def run(coro):
    return asyncio.run(coro)
