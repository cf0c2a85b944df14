"""A small, failure-tolerant memcached client (text protocol, one pipelined
connection per server).

Why not aiomcache: a request that does not finish normally there can leave its
reply in a pooled connection, and the next request on that connection reads it
(the desync behind CVE-2022-27924). aiomcache 0.8 closes a connection after an
``Exception`` but pools it again after a *cancel* (``CancelledError`` is a
BaseException), which is what a session does when its client hangs up in the
middle of a block check; and its simple commands spin for ever, without
yielding, when the server closes mid-reply.

Here replies are matched to requests by order, in the connection's own parser
(memcached answers each connection's requests in order). A request is written
whole before anything is awaited, and its reply is read to the end whoever is
still waiting for it: a caller that is cancelled or times out only stops
listening, so nothing a client does can cut an exchange half-way or shift the
replies. A reply the parser cannot place closes the connection.

Only I/O errors (refused, reset, closed mid-reply) and timeouts mark a server
down: it is skipped for ``reconnect`` seconds. An answer it did not expect
costs at most that connection and counts as a miss; a key memcached would
refuse (read from a stored value, say) is never sent. While no server answers
every call degrades to "miss"/"not stored": routing goes to LDAP and
throttling fails open. The outage is logged once, and so is the recovery.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import re
import time

from carbotui.core.settings import Endpoint

log = logging.getLogger("carbotui.backends.memcache")

MAX_KEY = 250
MAX_VALUE = 1 << 20          # memcached's default item size limit
PROTOCOL_LOG_EVERY = 60.0    # an unexpected answer is logged at most this often per server
_FAILED = object()           # a call that got no answer (as opposed to a None answer)
_KEY = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_KEY)


def valid_key(key: object) -> bool:
    """What every server accepts: 1..250 bytes of printable ASCII, no space.
    (Our own keys are escaped to less; a key read from a stored value may not be.)"""
    return type(key) is bytes and _KEY.fullmatch(key) is not None


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


class ProtocolError(Exception):
    """memcached answered something this client did not expect (not an I/O error)."""


# What a one-line reply means, per command; anything else is unexpected.
_STORE = {b"STORED": True, b"NOT_STORED": False}
_DELETE = {b"DELETED": True, b"NOT_FOUND": False}
_INCR = {b"NOT_FOUND": None}          # or the new value (digits)
_GET, _STATS = "get", "stats"         # replies of several lines, up to END


class _Request:
    __slots__ = ("kind", "future", "items")

    def __init__(self, kind, future):
        self.kind, self.future, self.items = kind, future, {}


class _Connection(asyncio.Protocol):
    """One connection; requests are answered in the order they were written."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: collections.deque[_Request] = collections.deque()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def request(self, data: bytes, kind) -> asyncio.Future:
        if self.closed:
            raise ConnectionResetError("memcached connection is closed")
        future = self.loop.create_future()
        self.pending.append(_Request(kind, future))
        self.transport.write(data)
        return future

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        pending = self.pending
        try:
            while pending:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                req = pending[0]
                kind = req.kind
                if kind is _GET and buf.startswith(b"VALUE ", pos):
                    # VALUE <key> <flags> <bytes> [<cas>], then the data block
                    parts = bytes(buf[pos:end]).split(b" ")
                    size = int(parts[3]) if len(parts) in (4, 5) else -1
                    if not 0 <= size <= MAX_VALUE:
                        raise ProtocolError(f"bad VALUE line {bytes(buf[pos:end])[:80]!r}")
                    stop = end + 2 + size
                    if len(buf) < stop + 2:
                        break                              # the rest is on its way
                    if buf[stop:stop + 2] != b"\r\n":
                        raise ProtocolError("data block not followed by CRLF")
                    req.items[parts[1]] = bytes(buf[end + 2:stop])
                    pos = stop + 2
                    continue
                line = bytes(buf[pos:end])
                pos = end + 2
                if kind is _GET or kind is _STATS:
                    if line == b"END":
                        result = req.items
                    elif kind is _STATS and line.startswith(b"STAT "):
                        _, name, value = (line + b" ").split(b" ", 2)
                        req.items[name] = value.rstrip(b" ")
                        continue
                    else:
                        raise ProtocolError(f"unexpected {line[:80]!r} in a {kind} reply")
                elif line in kind:
                    result = kind[line]
                elif kind is _INCR and line.isdigit():
                    result = int(line)
                elif line.startswith(b"SERVER_ERROR "):
                    # Answered (out of memory, too large): the connection is still in step.
                    pending.popleft()
                    if not req.future.done():
                        req.future.set_exception(ProtocolError(line[:200].decode("ascii", "replace")))
                    continue
                else:
                    raise ProtocolError(f"unexpected reply {line[:80]!r}")
                pending.popleft()
                if not req.future.done():                  # its caller may have left
                    req.future.set_result(result)
        except (ProtocolError, ValueError, IndexError) as exc:
            self.close(exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)))
            return
        del buf[:pos]
        if not pending and buf:
            self.close(ProtocolError(f"unrequested bytes {bytes(buf[:80])!r}"))
        elif len(buf) > MAX_VALUE + 1024:
            self.close(ProtocolError("reply line too long"))

    def close(self, exc: Exception | None = None) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail(exc or ConnectionAbortedError("memcached connection closed"))

    def _fail(self, exc: Exception) -> None:
        pending, self.pending = self.pending, collections.deque()
        for req in pending:
            if not req.future.done():
                req.future.set_exception(exc)
        self.buf.clear()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(exc if isinstance(exc, OSError) else
                   ConnectionResetError("memcached closed the connection"))


class _Server:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.conn: _Connection | None = None
        self.down_until = 0.0
        self.down = False
        self.protocol_logged = -PROTOCOL_LOG_EVERY
        self._connecting: asyncio.Lock | None = None

    async def connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:         # one connect at a time; the rest share it
            conn = self.conn
            if conn is None or conn.closed:
                loop = asyncio.get_running_loop()
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self.endpoint.host, self.endpoint.port)
                self.conn = conn
            return conn

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


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

    async def _call(self, server: _Server, data: bytes, kind):
        """Write one request to ``server`` and wait for its answer; _FAILED if none."""
        try:
            async with asyncio.timeout(self.timeout):
                conn = server.conn
                if conn is None or conn.closed:
                    conn = await server.connect()
                result = await conn.request(data, kind)
        except OSError as exc:           # refused, reset, closed mid-reply; TimeoutError too
            self._mark_down(server, exc)
            return _FAILED
        except ProtocolError as exc:
            self._unexpected(server, exc)
            return _FAILED
        if server.down:
            server.down = False
            log.warning("memcached %s answers again; route cache and throttling are back",
                        server.endpoint)
        return result

    def _unexpected(self, server: _Server, exc: ProtocolError) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - server.protocol_logged >= PROTOCOL_LOG_EVERY:
            server.protocol_logged = now
            log.warning("memcached %s: unexpected answer (%s); treated as a miss, the server "
                        "stays in use", server.endpoint, exc)

    def _mark_down(self, server: _Server, exc: BaseException) -> None:
        self.errors += 1
        server.down_until = time.monotonic() + self.reconnect
        server.close()
        if not server.down:
            server.down = True
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            log.warning("memcached %s unavailable (%s); logins are routed through LDAP and "
                        "not throttled until it is back (retry every %gs)",
                        server.endpoint, reason or type(exc).__name__, self.reconnect)

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """Values found, by key; a failing server just contributes nothing. Keys no
        server would accept, and repeats, are misses without a request."""
        groups: dict[int, list[bytes]] = {}
        for key in dict.fromkeys(keys):
            if not valid_key(key):
                continue
            server = self._pick(key)
            if server is not None:
                groups.setdefault(id(server), []).append(key)
        found: dict[bytes, bytes] = {}
        for server in self.servers:
            group = groups.get(id(server))
            if group:
                values = await self._call(server, b"get " + b" ".join(group) + b"\r\n", _GET)
                if values is not _FAILED:
                    found.update((k, values[k]) for k in group if k in values)
        return found

    async def add(self, key: bytes, value: bytes, ttl: int) -> bool:
        """Store ``value`` unless the key exists (``add``: never ``set``)."""
        server = self._pick(key) if valid_key(key) else None
        if server is None or not 0 <= ttl or len(value) > MAX_VALUE:
            return False
        data = b"add %s 0 %d %d\r\n%s\r\n" % (key, ttl, len(value), value)
        return await self._call(server, data, _STORE) is True

    async def delete(self, key: bytes) -> bool:
        server = self._pick(key) if valid_key(key) else None
        return server is not None and await self._call(
            server, b"delete " + key + b"\r\n", _DELETE) is True

    async def incr(self, key: bytes, ttl: int) -> int | None:
        """Count one more; creates the counter with ``ttl``. None when unavailable."""
        server = self._pick(key) if valid_key(key) else None
        if server is None:
            return None
        for _ in range(2):
            value = await self._call(server, b"incr " + key + b" 1\r\n", _INCR)
            if value is _FAILED:
                return None
            if value is not None:
                return value
            added = await self._call(server, b"add %s 0 %d 1\r\n1\r\n" % (key, ttl), _STORE)
            if added is True:                           # it was NOT_FOUND: created
                return 1
            if added is _FAILED:
                return None
            # Someone else created it between our incr and add: count again.
        return None

    async def stats(self) -> dict[str, dict[bytes, bytes]]:
        out = {}
        for server in self.servers:
            result = await self._call(server, b"stats\r\n", _STATS)
            if result is not _FAILED:
                out[str(server.endpoint)] = result
        return out

    async def close(self) -> None:
        for server in self.servers:
            server.close()
