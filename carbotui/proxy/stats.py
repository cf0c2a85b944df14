"""A worker's counters, and its stats socket (var/run/proxy_NN.sock).

Sessions count into ``Stats``; a client of the socket (the dashboard, `carbotui
stats`) connects, sends one request line and reads until EOF: one JSON document, a
carbotui.backends.worker_sockets.WorkerSnapshot. Cheap enough to poll every second with
tens of thousands of sessions: a snapshot is built only on request, and the dashboard
asks for counts and one page of sessions (a SessionQuery: sort, filter, limit), not for
every session: the counts by protocol and state are one pass over the sessions in C
(attrgetter), the page a heapq selection of `limit` of them.
"""
from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable, Final

from carbotui.services import nodes

from carbotui.backends import worker_sockets as wire
from carbotui.proxy import privileges

# The functions below take the worker's SessionServices as ``Any``: compiled, a declared
# SessionServices (a native class) would be checked at each call, and tests hand in
# stand-ins (SimpleNamespace).

SOCKET_MODE = 0o660


def _bounds_ms() -> tuple[float, ...]:
    # (in a function: compiled, the module's top level may not read worker_sockets' types,
    # which mypy infers after this module's: mypyc links core.lines and this one together)
    return tuple(b * 1000 for b in wire.CONNECT_BUCKETS)


_BOUNDS_MS: Final = _bounds_ms()


def _no_connects() -> list[int]:
    return [0] * (len(_BOUNDS_MS) + 1)


# Both counter classes are compiled (setup.py): the sessions' compiled code calls
# backend() and connected() natively and reads the counters as struct fields.
@dataclass
class BackendCounters:
    active: int = 0
    sessions: int = 0
    errors: int = 0
    connect_ms: float = 0.0        # moving average of connect+greeting time
    # the same times as a histogram (wire.CONNECT_BUCKETS, then +Inf) and their sum
    connect_counts: list[int] = field(default_factory=_no_connects)
    connect_sum_ms: float = 0.0

    def connected(self, ms: float) -> None:
        self.connect_ms = ms if not self.sessions else 0.8 * self.connect_ms + 0.2 * ms
        self.sessions += 1
        # bisect.bisect_left(_BOUNDS_MS, ms), without a call through the bisect module
        # (a dozen bounds: a compiled loop over them costs less than finding and calling it)
        i = 0
        for bound in _BOUNDS_MS:
            if not bound < ms:
                break
            i += 1
        self.connect_counts[i] += 1
        self.connect_sum_ms += ms


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    connections: Counter = field(default_factory=Counter)      # by listener kind
    logins_ok: Counter = field(default_factory=Counter)        # by protocol
    logins_failed: Counter = field(default_factory=Counter)
    logins_temp: Counter = field(default_factory=Counter)
    throttled: Counter = field(default_factory=Counter)         # "ip" | "user" | "ip_connections"
    web_requests: Counter = field(default_factory=Counter)     # by listener kind
    rejected_busy: int = 0
    proxy_refused: int = 0               # PROXY headers missing, malformed or untrusted
    backends: dict[str, BackendCounters] = field(default_factory=dict)
    # (listener kind, upstream short name or "-", status class "2xx") -> responses
    web_responses: Counter = field(default_factory=Counter)
    # (listener kind, why: sessions.log's word) -> ended mail sessions
    sessions_ended: Counter = field(default_factory=Counter)

    def backend(self, name: str) -> BackendCounters:
        counters = self.backends.get(name)          # one lookup, not two
        if counters is None:
            counters = self.backends[name] = BackendCounters()
        return counters


_KIND_STATE = attrgetter("kind", "state")
_STARTED = attrgetter("started")


def _bytes(n) -> int:
    return n if n is not None else -1


# wire.SESSION_SORT, for the live sessions (MailSession, WebSession): the same keys, from
# their own attribute names (kind is the wire's protocol, client_ip its client); the
# start time rounded as it is sent.
_LIVE_SORT: dict[str, Callable[[Any], Any]] = {
    "started": lambda s: round(s.started, 3),
    "account": lambda s: s.account or "(login)",
    "client": lambda s: str(s.client_ip),
    "bytes_in": lambda s: _bytes(s.bytes_in),
    "bytes_out": lambda s: _bytes(s.bytes_out),
    "server": lambda s: str(s.server).split(".", 1)[0],
    "worker": lambda s: 0,                      # one worker: all the same
    "protocol": lambda s: str(s.kind),
    "state": lambda s: str(s.state),
    "id": attrgetter("id"),
}


# wire.session_fields of a live session, but the worker's own name
_LIVE_NAMES = {"account": "account", "client": "client_ip", "protocol": "kind",
               "server": "server", "state": "state"}
_LIVE_FIELDS = {key: attrgetter(name) for key, name in _LIVE_NAMES.items()}
_LIVE_ALL = attrgetter(*_LIVE_NAMES.values())


def _filter(live: list, terms, worker: str) -> list:
    """The live sessions that wire.matches(session_fields(s), terms): one term at a time
    over those left, each a comprehension; the worker's own name is decided once."""
    name_text = str(worker).lower()
    for name, value in terms:
        if not live:
            break
        if name is None:
            if value in name_text:               # every session matches it
                continue
            if "\0" not in value:                # the fields in one string, NUL between
                live = [s for s in live if value in "\0".join(map(str, _LIVE_ALL(s))).lower()]
            else:
                live = [s for s in live
                        if any(value in str(v).lower() for v in _LIVE_ALL(s))]
        elif name == "worker":
            if value not in name_text:
                return []
        elif name in _LIVE_FIELDS:
            get = _LIVE_FIELDS[name]
            live = [s for s in live if value in str(get(s)).lower()]
        else:
            return []                            # a field sessions do not have
    return live


def select_sessions(live: list, worker: str, query: wire.SessionQuery | None) -> tuple[list, int]:
    """(the sessions to send, how many match the filter): every one for no query, else the
    first ``query.limit`` matching ones in its order, ties by id (what
    wire.SessionQuery.page makes of them)."""
    if query is None:
        return live, len(live)
    if query.terms:
        live = _filter(live, query.terms, worker)
    matched = len(live)
    key = _LIVE_SORT[query.sort]
    limit = matched if query.limit is None else query.limit
    if limit == 0:
        return [], matched
    if query.sort == "started" and limit < matched:
        # The dashboard's default (newest first): the raw start times, sorted in C (they
        # come nearly in order: timsort's best case), give the edge of the page; only the
        # sessions near or past it get the exact key (the rounded time, ties by id).
        # Exact: every session of the page rounds to no less (more) than the rounded edge,
        # so its raw time is within 0.5 ms of it or beyond.
        times = sorted(map(_STARTED, live))
        if query.reverse:
            edge = round(times[-limit], 3) - 0.001
            live = [s for s in live if s.started >= edge]
        else:
            edge = round(times[limit - 1], 3) + 0.001
            live = [s for s in live if s.started <= edge]
    if query.sort == "id":
        page = heapq.nlargest(limit, live, key=key) if query.reverse else \
            heapq.nsmallest(limit, live, key=key)
    elif query.reverse:
        page = heapq.nlargest(limit, live, key=lambda s: (key(s), -s.id))
    else:
        page = heapq.nsmallest(limit, live, key=lambda s: (key(s), s.id))
    return page, matched


def snapshot(services: Any,
             query: wire.SessionQuery | None = None) -> wire.WorkerSnapshot:
    """The worker's stats, with the sessions ``query`` asks for (None: all of them)."""
    # Read through Any: compiled, each read of a declared Router, Throttle... would check
    # the value's type, and the tests hand stand-ins (SimpleNamespace) for those parts
    # (nor does a change of context.py's field types need a rebuild of this module).
    w: Any = services
    r = w.router
    st: Stats = w.stats
    name = w.name
    live_sessions = list(w.sessions.values())
    counts: dict[str, dict[str, int]] = {}
    for (kind, state), n in Counter(map(_KIND_STATE, live_sessions)).items():
        counts.setdefault(kind, {})[state] = n
    page, matched = select_sessions(live_sessions, name, query)
    upstreams = w.all_upstreams()
    maintenance = w.maintenance
    in_maintenance = w.in_maintenance
    cache, live = w.cache, w.live
    return wire.WorkerSnapshot(
        worker=name, pid=os.getpid(), time=time.time(), started=st.started,
        draining=w.draining,
        connections=dict(st.connections),
        logins=wire.Logins(ok=dict(st.logins_ok), failed=dict(st.logins_failed),
                           temporary=dict(st.logins_temp)),
        throttled=dict(st.throttled), rejected_busy=st.rejected_busy,
        sockets=len(live_sessions) + sum(1 for s in live_sessions
                                         if getattr(s, "splice", None) is not None)
        + sum(len(u.idle) for u in upstreams),
        proxy_refused=st.proxy_refused,
        cache=wire.CacheStats(hits=r.hits, misses=r.misses, ldap_lookups=r.ldap_lookups,
                              poisoned=r.poisoned, memcached_available=cache.available,
                              memcached_errors=cache.errors),
        ldap_searches=w.directory.searches,
        backends={short: wire.BackendStats(
            active=b.active, sessions=b.sessions, errors=b.errors, connect_ms=b.connect_ms,
            maintenance=any(h.split(".", 1)[0] == short for h in maintenance))
            for short, b in st.backends.items()},
        maintenance=sorted(maintenance),
        web=wire.WebStats(
            requests=dict(st.web_requests),
            upstreams=[wire.UpstreamStats(
                server=u.name, port=u.port, kind=u.port_kind, healthy=u.healthy,
                active=u.active, requests=u.requests,
                maintenance=in_maintenance(u.server.hostname), errors=u.errors,
                idle=len(u.idle)) for u in upstreams]),
        config=wire.ConfigStats(version=live.version, applied_at=live.applied_at,
                                mail_mode=live.mail_mode, ldap_error=live.error,
                                virtual_hosts=sorted(live.vhosts)),
        sessions=[wire.Session(s.id, name, s.kind, s.client_ip, s.client_port, s.account,
                               s.server, s.state, round(s.started, 3), s.bytes_in,
                               s.bytes_out)
                  for s in page],
        metrics=wire.MetricStats(
            blocked=getattr(w.throttle, "blocked", 0),
            web_responses=_nested(st.web_responses),
            connect={short: wire.ConnectTimes(list(b.connect_counts),
                                              round(b.connect_sum_ms / 1000, 6))
                     for short, b in st.backends.items()},
            sessions_ended=_nested(st.sessions_ended)),
        session_counts=counts, sessions_matched=matched,
    )


def _nested(counter: Counter) -> dict:
    """{(a, b, ...): n} as {a: {b: ... n}} (JSON has no tuple keys)."""
    out: dict = {}
    for key, n in counter.items():
        d = out
        for part in key[:-1]:
            d = d.setdefault(part, {})
        d[key[-1]] = n
    return out


async def serve(services: Any, path: str) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                # One line; a client that sends nothing (an older one) gets everything.
                line = await asyncio.wait_for(reader.readline(), wire.STATS_REQUEST_WAIT)
            except TimeoutError:
                line = b""
            except ValueError:          # longer than the reader's limit
                raise wire.WireError(f"request: longer than {wire.STATS_MAX_REQUEST} bytes")
            query = wire.parse_stats_request(line)
        except wire.WireError as exc:
            reply = wire.encode_error(str(exc))
        else:
            reply = snapshot(services, query).encode()
        try:
            writer.write(reply)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    # 0660, whatever the umask: the worker's user and group (an admin in that group, e.g.
    # `carbotui stats` without root); nobody else sees sessions, accounts and addresses.
    sock = privileges.unix_listener(path, SOCKET_MODE)
    return await asyncio.start_unix_server(handle, sock=sock, limit=wire.STATS_MAX_REQUEST)


# --- the fleet view (carbotui/services/nodes.py) -------------------------------------------------


def fleet_summary(services: Any) -> dict:
    """What this worker tells the other nodes about itself (`carbotui fleet`)."""
    w: Any = services        # (as in snapshot: no compiled check of context.py's types)
    st: Stats = w.stats
    live = w.live
    return {
        "node": w.node_id, "worker": w.name, "pid": os.getpid(),
        "time": time.time(), "started": st.started, "sessions": len(w.sessions),
        "logins_ok": sum(st.logins_ok.values()), "logins_failed": sum(st.logins_failed.values()),
        "config": live.version, "mail_mode": live.mail_mode,
        "listen": sorted(str(e) for eps in w.settings.listen.values() for e in eps)[:8],
    }


async def publish_forever(services: Any) -> None:
    w: Any = services
    while True:
        try:
            await nodes.publish(w.cache, w.node_id, w.name, fleet_summary(services))
        except Exception:  # noqa: BLE001 - the fleet view must never hurt serving
            pass
        await asyncio.sleep(nodes.PUBLISH_EVERY)
