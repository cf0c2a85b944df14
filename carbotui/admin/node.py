"""Everything the dashboard shows about this node, collected in one blocking call.

`Fleet.collect()` runs in a thread (a Textual thread worker) once per refresh:

  worker stats sockets  var/run/proxy_NN.sock   sessions, logins, cache, backends
  memcached `stats`     settings.memcached_servers
  psutil                CPU, RSS, open files, connections of every supervised pid
  supervisord           process states over XML-RPC (carbotui.backends.supervisor)
  LDAP (every ~5 s)     mail mode, domains, certificates, mailbox servers
  TCP probes (~5 s)     can this node reach each mailbox server's IMAP port?

It returns a `FleetSnapshot`: frozen dataclasses and tuples only (its sessions
are the workers' own worker_sockets.Session, read-only by convention: frozen they
cost three times as much to build), so two snapshots compare with `==` and the
dashboard redraws only on a real change. Its sessions are one page, not every
session: `Fleet.session_query` (the Connections screen's sort, filter and a limit)
goes to every worker, each answers its counts and its first `limit` matching
sessions, and the pages merged and cut again are the rows a sort of all of them
would show first; the totals come from the counts.
A part that does not answer becomes a line in `problems` instead of an
exception, and is simply asked again next time: that is the reconnect.

`LogTail` follows a log through rotation and truncation (`AuditTail` reads
audit.log events, `AlertTail` the alerts auditwatch writes to alerts.log),
`BlockStore` lists, adds and lifts IP blocks in memcached from blocking code,
while the workers' sockets and their format are carbotui/backends/worker_sockets.py (the
snapshot a worker sends, and `WorkerControl` for kick and maintenance requests).
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import psutil

from carbotui.core import certs
from carbotui.services.alerts import Alert, alert_from_json
from carbotui.core.audit import AuditEvent, parse_line
from carbotui.backends.supervisor import ProcessState, Supervisor, SupervisorError
from carbotui.services.throttle import MAX_TTL, Block
from carbotui.backends.worker_sockets import (Session, SessionQuery, WorkerSnapshot,
                                              read_maintenance, read_snapshot, stats_sockets)

EXPIRY_WARNING_DAYS = 30          # certificates closer than this to notAfter are flagged
HISTORY_POINTS = 120              # sparkline length (one point per refresh)
SLOW_EVERY = 5.0                  # seconds between LDAP reads and backend probes
PROXY_GROUP = "proxy"       # the demo's [program:proxy]; production: carbotui:proxy_NN
WORKER_NAME = re.compile(r"proxy_\d+")   # a worker's process name (its stats socket's)


# --- the snapshot ------------------------------------------------------------------------

def hit_ratio(hits: int, misses: int) -> float | None:
    """The share of lookups a cache answered; None before any."""
    total = hits + misses
    return hits / total if total else None


def _hit_ratio_of(hits: str, misses: str) -> property:
    """A `hit_ratio` property over the two counter fields named."""
    return property(lambda self: hit_ratio(getattr(self, hits), getattr(self, misses)),
                    doc="The share of lookups the cache answered; None before any.")


@dataclass(frozen=True)
class WorkerStats:
    """The dashboard's summary of what a worker reports on its stats socket
    (a worker_sockets.WorkerSnapshot)."""
    sessions: int = 0
    connections: int = 0            # accepted since start, all listeners
    logins_ok: int = 0
    logins_failed: int = 0
    logins_temporary: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    ldap_lookups: int = 0
    memcached_available: bool = True
    draining: bool = False
    # What the worker took from LDAP and when (carbotui/proxy/live.py): compared with the
    # directory to show whether an admin change has reached this worker.
    config_version: str = ""        # "" = not reported
    config_applied_at: float = 0.0
    config_mail_mode: str = ""
    config_vhosts: tuple[str, ...] = ()
    config_error: str = ""
    hit_ratio = _hit_ratio_of("cache_hits", "cache_misses")


@dataclass(frozen=True)
class Process:
    """One supervised process, with psutil figures while it runs."""
    name: str                       # supervisor's full name: proxy:proxy_00, memcached
    short: str
    group: str
    state: str                      # supervisor state, or "UNSUPERVISED" when only the
    pid: int                        #   stats socket is known (supervisord unreachable)
    started: float
    description: str = ""
    cpu: float | None = None        # percent of one core since the previous collect
    rss: int | None = None
    open_files: int | None = None
    connections: int | None = None
    stats: WorkerStats | None = None   # proxy workers whose stats socket answered

    @property
    def is_worker(self) -> bool:
        return is_worker_process(self.group, self.short)


def is_worker_process(group: str, short: str) -> bool:
    """A proxy worker: the demo's group ``proxy``, or a ``proxy_NN`` process of another group
    (the production supervisor file's ``carbotui:proxy_00``)."""
    return group == PROXY_GROUP or WORKER_NAME.fullmatch(short) is not None


@dataclass(frozen=True)
class Backend:
    name: str                       # mailbox server hostname (short name from workers)
    active: int = 0
    sessions: int = 0               # since the workers started
    sessions_per_s: float = 0.0
    errors: int = 0
    errors_per_s: float = 0.0
    connect_ms: float = 0.0
    probe_ms: float | None = None   # TCP connect from this node; None = unreachable/unknown
    probed: bool = False
    maintenance: bool = False

    @property
    def health(self) -> str:
        if self.maintenance:
            return "maintenance"
        if self.probed and self.probe_ms is None:
            return "down"
        if self.errors_per_s > 0:
            return "errors"
        return "ok"


@dataclass(frozen=True)
class Memcached:
    endpoint: str
    up: bool
    hits: int = 0
    misses: int = 0
    items: int = 0
    evictions: int = 0
    bytes: int = 0
    limit: int = 0
    connections: int = 0
    uptime: int = 0
    error: str = ""
    hit_ratio = _hit_ratio_of("hits", "misses")


@dataclass(frozen=True)
class Certificate:
    subject: str
    names: tuple[str, ...]
    not_after: str                  # ISO date
    days_left: int

    @property
    def flag(self) -> str:
        if self.days_left < 0:
            return "expired"
        return "expiring" if self.days_left < EXPIRY_WARNING_DAYS else "ok"


@dataclass(frozen=True)
class DomainView:
    name: str
    virtual_hostnames: tuple[str, ...] = ()
    virtual_ips: tuple[str, ...] = ()
    certificate: Certificate | None = None
    certificate_error: str = ""


@dataclass(frozen=True)
class DirectoryView:
    server: str                     # this node's server entry
    mail_mode: str
    domains: tuple[DomainView, ...]
    mailbox_servers: tuple[str, ...]

    @property
    def virtual_hostnames(self) -> tuple[str, ...]:
        return tuple(sorted(n for d in self.domains for n in d.virtual_hostnames))


def config_applied(stats: "WorkerStats | None", directory: DirectoryView | None) -> str:
    """Has this worker applied what LDAP holds? applied | pending | error | unknown."""
    if stats is None or directory is None or not stats.config_version:
        return "unknown"
    if stats.config_error:
        return "error"
    if (stats.config_mail_mode == directory.mail_mode
            and stats.config_vhosts == directory.virtual_hostnames):
        return "applied"
    return "pending"


@dataclass(frozen=True)
class Totals:
    sessions: int = 0
    workers_up: int = 0
    workers_total: int = 0
    logins_ok_per_s: float = 0.0
    logins_failed_per_s: float = 0.0
    connections_per_s: float = 0.0
    cache_hit_ratio: float | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    node: str
    taken_at: float
    processes: tuple[Process, ...] = ()
    # The first `session_query.limit` sessions matching its filter, in its order (every
    # session when session_query is None, as a test source makes them).
    sessions: tuple[Session, ...] = ()
    backends: tuple[Backend, ...] = ()
    memcached: tuple[Memcached, ...] = ()
    directory: DirectoryView | None = None
    totals: Totals = Totals()
    history: tuple[tuple[str, tuple[float, ...]], ...] = ()   # name -> points, oldest first
    problems: tuple[str, ...] = ()
    supervisor_up: bool = True
    blocks: tuple[Block, ...] = ()  # IP blocks in memcached, soonest expiry first
    blocks_error: str = ""          # why `blocks` is unknown ("" = it is complete)
    session_query: SessionQuery | None = None   # what `sessions` answers
    sessions_matched: int | None = None         # sessions matching its filter, all workers
    # every live session by (listener kind, state, count), sorted
    session_counts: tuple[tuple[str, str, int], ...] = ()

    @property
    def matched(self) -> int:
        """How many sessions match the query's filter (``sessions`` may show fewer)."""
        return len(self.sessions) if self.sessions_matched is None else self.sessions_matched

    @property
    def workers(self) -> tuple[Process, ...]:
        return tuple(p for p in self.processes if p.is_worker)

    def series(self, name: str) -> tuple[float, ...]:
        return dict(self.history).get(name, ())

    def same_data(self, other: "FleetSnapshot | None") -> bool:
        """Equal apart from the time it was taken: nothing to redraw."""
        return other is not None and dataclasses.replace(other, taken_at=self.taken_at) == self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# --- readers (each returns data or raises OSError/ValueError) ------------------------------

def read_memcached_stats(host: str, port: int, timeout: float = 0.5) -> dict[str, str]:
    """memcached's text-protocol `stats`: name -> value, up to END."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("memcached closed the connection")
            buf += chunk
            if len(buf) > 1 << 20:
                raise ValueError("memcached stats reply too large")
    out = {}
    for line in buf.decode("ascii", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def probe_tcp(host: str, port: int, timeout: float = 0.5) -> float | None:
    """Milliseconds to connect, or None when the port does not answer."""
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return None
    return (time.perf_counter() - start) * 1000


def _sum(counter: dict) -> int:
    return sum(int(v) for v in counter.values())


def worker_stats(snap: WorkerSnapshot) -> WorkerStats:
    logins, cache, config = snap.logins, snap.cache, snap.config
    return WorkerStats(
        sessions=snap.open_sessions,
        connections=_sum(snap.connections),
        logins_ok=_sum(logins.ok),
        logins_failed=_sum(logins.failed),
        logins_temporary=_sum(logins.temporary),
        cache_hits=int(cache.hits),
        cache_misses=int(cache.misses),
        ldap_lookups=int(cache.ldap_lookups),
        memcached_available=bool(cache.memcached_available),
        draining=bool(snap.draining),
        config_version=str(config.version),
        config_applied_at=float(config.applied_at or 0.0),
        config_mail_mode=str(config.mail_mode),
        config_vhosts=tuple(sorted(config.virtual_hosts or ())),
        config_error=str(config.ldap_error or ""),
    )


def read_worker_snapshots(run_dir, timeout: float = 1.0,
                          query: SessionQuery | None = None) -> dict[str, WorkerSnapshot]:
    """Every worker's stats socket in ``run_dir`` that answers, by worker name (the
    dashboard's collect and the metrics exporter, carbotui/admin/metrics.py), with the
    sessions ``query`` asks for (None: every one). A worker that does not answer is left
    out; the caller tells why (supervisord's state)."""
    out = {}
    for path in stats_sockets(run_dir):
        try:
            out[path.stem] = read_snapshot(path, timeout=timeout, query=query)
        except FileNotFoundError:
            continue                     # removed while we listed: a worker exiting
        except (OSError, ValueError):
            continue                     # reported per worker by the caller
    return out


def certificate_view(pem: str) -> Certificate:
    cert = certs.load_cert(pem)
    d = certs.describe(cert)
    return Certificate(subject=d["subject"], names=tuple(d["names"]),
                       not_after=d["not_after"][:10], days_left=d["expires_in_days"])


# --- rates -------------------------------------------------------------------------------

class Rates:
    """Per-second rates of counters that reset when a worker restarts.

    Counters are kept per key, and keys include the pid: a new process starts
    a new series instead of producing a negative rate. Keys not touched during
    a collect (a worker gone) are dropped by `end()`.
    """

    def __init__(self):
        self._last: dict[tuple, tuple[float, int]] = {}
        self._touched: set[tuple] = set()

    def per_second(self, key: tuple, value: int, now: float) -> float:
        self._touched.add(key)
        prev = self._last.get(key)
        self._last[key] = (now, value)
        if prev is None or now <= prev[0]:
            return 0.0
        delta = value - prev[1] if value >= prev[1] else value
        return delta / (now - prev[0])

    def end(self) -> None:
        for key in set(self._last) - self._touched:
            del self._last[key]
        self._touched = set()


# --- audit.log follower --------------------------------------------------------------------

class LogTail:
    """New lines of a log file since the previous call, across rotation and truncation.

    Rotation (a new inode at the path): the rest of the old file is read first,
    then the new one from its start. Truncation (size below our offset): read
    from the start. A partial last line waits for its newline.
    """

    def __init__(self, path: str | Path, *, backlog_bytes: int = 65536):
        self.path = str(path)
        self.backlog_bytes = backlog_bytes
        self._file = None
        self._ino = None
        self._partial = b""
        self._started = False

    def _open(self, from_start: bool) -> bool:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return False
        ino = os.fstat(f.fileno()).st_ino
        if not from_start:
            # First open: show the recent past, not the whole history.
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - self.backlog_bytes))
            if size > self.backlog_bytes:
                f.readline()                 # drop the cut-off first line
        self._file, self._ino, self._partial = f, ino, b""
        return True

    def _read_available(self) -> bytes:
        data = self._file.read()
        return data or b""

    def read_lines(self) -> list[str]:
        data = b""
        if self._file is None:
            if not self._open(from_start=self._started):
                self._started = True
                return []
            self._started = True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        data += self._read_available()
        if st is not None and st.st_ino != self._ino:            # rotated
            self._file.close()
            self._file = None
            lines = self._split(data)
            if self._open(from_start=True):
                lines += self._split(self._read_available())
            return lines
        if st is not None and st.st_size < self._file.tell():    # truncated in place
            self._file.seek(0)
            self._partial = b""
            data = self._read_available()
        return self._split(data)

    def _split(self, data: bytes) -> list[str]:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines if line]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class AuditTail(LogTail):
    """audit.log: new login events since the previous call."""

    def read_events(self) -> list[AuditEvent]:
        return [e for e in map(parse_line, self.read_lines()) if e is not None]


def parse_alert(line: str) -> Alert | None:
    """One line of alerts.log (carbotui.services.alerts.AlertLog), or None if it is not an alert."""
    try:
        return alert_from_json(json.loads(line))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class AlertTail(LogTail):
    """alerts.log (JSON lines written by auditwatch): new alerts since the previous call.
    The first call returns the recent past (the last `backlog_bytes`, a few hundred
    alerts): enough to count the last hour's alerts when the dashboard starts."""

    def __init__(self, path: str | Path, *, backlog_bytes: int = 512 * 1024):
        super().__init__(path, backlog_bytes=backlog_bytes)

    def read_alerts(self) -> list[Alert]:
        return [a for a in map(parse_alert, self.read_lines()) if a is not None]


# --- IP blocks ---------------------------------------------------------------------------------

class BlocksUnavailable(RuntimeError):
    """memcached did not answer: the blocks cannot be listed or changed now."""


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds from "3600", "90s", "15m", "2h" or "7d"; ValueError with a sentence otherwise.
    A block lasts 1 s to 30 days (memcached reads a longer expiry as a date)."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text.lower())
    if not m:
        raise ValueError(f"{text.strip() or 'an empty duration'!r} is not a duration: give "
                         f"seconds, or a number with s, m, h or d (e.g. 3600, 15m, 2h, 7d)")
    seconds = int(m.group(1)) * DURATION_UNITS[m.group(2)]
    if not 1 <= seconds <= MAX_TTL:
        raise ValueError(f"a block lasts 1 second to 30 days ({MAX_TTL} s), not {seconds} s")
    return seconds


def parse_ip(text: str) -> str:
    """The canonical text of an IPv4 or IPv6 address; ValueError with a sentence otherwise."""
    from carbotui.services.throttle import normalize_ip
    try:
        return ipaddress.ip_address(normalize_ip(text.strip())).compressed
    except ValueError:
        raise ValueError(f"{text.strip() or 'an empty address'!r} is not an IPv4 or IPv6 "
                         f"address") from None


class BlockStore:
    """IP blocks (carbotui.services.throttle) from blocking code: the dashboard's threads and the CLI.

    One private event loop runs the async Throttle, one call at a time (the poll
    thread lists while an action thread may add). memcached being down raises
    BlocksUnavailable rather than passing for "no blocks"."""

    def __init__(self, settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._throttle = None

    @property
    def whitelist(self) -> tuple:
        return getattr(self.settings.throttle, "whitelist", ()) or ()

    def _run(self, method: str, *args, **kwargs):
        from carbotui.backends.memcache import Memcache
        from carbotui.services.throttle import Throttle, ThrottleSettings, ThrottleUnavailable
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                cache = Memcache(self.settings.memcached_servers,
                                 timeout=self.settings.memcached_timeout,
                                 reconnect=self.settings.memcached_reconnect)
                self._throttle = Throttle(cache, self.settings.throttle or ThrottleSettings())
            try:
                result = self._loop.run_until_complete(
                    getattr(self._throttle, method)(*args, **kwargs))
            except ThrottleUnavailable:
                result = None
            if not self._throttle.cache.available:
                servers = ", ".join(str(e) for e in self.settings.memcached_servers)
                raise BlocksUnavailable(f"memcached ({servers}) does not answer: IP blocks "
                                        f"cannot be read or changed now")
            return result

    def list(self) -> list[Block]:
        return self._run("blocks")

    def check(self, ip: str, seconds: str | int) -> tuple[str, int]:
        """Validated (ip, seconds) for add(); ValueError with the reason for the admin."""
        from carbotui.services.throttle import whitelisted
        ip = parse_ip(ip)
        seconds = parse_duration(str(seconds))
        if whitelisted(ip, self.whitelist):
            raise ValueError(f"{ip} is in throttle.whitelist: a block would have no effect")
        return ip, seconds

    def add(self, ip: str, seconds: str | int, reason: str, *, by: str = "") -> Block:
        ip, seconds = self.check(ip, seconds)
        return self._run("block", ip, seconds, reason.strip() or "blocked by an admin", by=by)

    def remove(self, ip: str) -> bool:
        """Lift the block on `ip`; False when there was none."""
        return self._run("unblock", parse_ip(ip))

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        cache = self._throttle.cache

        def finish() -> None:
            try:
                loop.run_until_complete(cache.close())
            except Exception:   # noqa: BLE001 - closing on the way out; nothing left to tell
                pass
            finally:
                loop.close()

        # A thread of its own: close() may be called from a thread whose loop is running
        # (the dashboard's on_unmount), where run_until_complete is not allowed.
        closer = threading.Thread(target=finish, name="blockstore-close", daemon=True)
        closer.start()
        closer.join(2.0)


# --- the collector ---------------------------------------------------------------------------

@dataclass
class _Slow:
    """Results that are refreshed every SLOW_EVERY seconds, not every poll."""
    at: float = 0.0
    directory: DirectoryView | None = None
    directory_error: str = ""
    probes: dict[str, float | None] = field(default_factory=dict)
    servers: dict[str, object] = field(default_factory=dict)      # hostname -> MailServer


def merge_sessions(snapshots: Iterable[WorkerSnapshot], query: SessionQuery
                   ) -> tuple[tuple[Session, ...], int, tuple[tuple[str, str, int], ...]]:
    """(the page, sessions matching the filter, counts by kind and state) of the workers'
    answers to ``query``. An older worker sends every session, unfiltered: filtered here."""
    pages: list[Session] = []
    matched = 0
    counts: dict[tuple[str, str], int] = {}
    for snap in snapshots:
        if snap.sessions_matched is None:
            mine = query.matching(snap.sessions)
            matched += len(mine)
            pages += mine
        else:
            matched += snap.sessions_matched
            pages += snap.sessions
        for kind, by_state in snap.session_counts.items():
            for state, n in by_state.items():
                counts[(kind, state)] = counts.get((kind, state), 0) + n
    return (tuple(query.page(pages)), matched,
            tuple((k, s, n) for (k, s), n in sorted(counts.items())))


class Fleet:
    def __init__(self, settings, *, supervisor: Supervisor | None = None, directory=None,
                 clock=time.time, session_query: SessionQuery | None = None):
        self.settings = settings
        # What the sessions table shows: set by the dashboard when its sort or filter
        # changes; every refresh asks the workers for it.
        self.session_query = session_query or SessionQuery()
        self.supervisor = supervisor or Supervisor(settings.supervisor_socket)
        self._directory = directory
        self.clock = clock
        self.rates = Rates()
        self._procs: dict[int, psutil.Process] = {}
        self._slow = _Slow()
        self._cert_cache: dict[str, Certificate] = {}
        self._worker_fds: dict[int, tuple[float, int]] = {}   # pid -> (when, count)
        self._fd_listings_left = 1        # stale worker fd counts listed again this refresh
        self.history: dict[str, deque] = {
            name: deque(maxlen=HISTORY_POINTS)
            for name in ("sessions", "logins_ok", "logins_failed", "connections")}
        self._blocks: BlockStore | None = None

    @property
    def blocks(self) -> BlockStore:
        if self._blocks is None:
            self._blocks = BlockStore(self.settings)
        return self._blocks

    @property
    def directory(self):
        if self._directory is None:
            from carbotui.backends.directory import Directory
            self._directory = Directory(self.settings)
        return self._directory

    def refresh_directory_soon(self) -> None:
        """After an admin change: read LDAP on the next collect, not in 5 s."""
        self._slow.at = 0.0

    # -- one poll ------------------------------------------------------------
    def collect(self) -> FleetSnapshot:
        now = self.clock()
        problems: list[str] = []
        self._fd_listings_left = 1

        supervised, supervisor_up = self._supervised(problems)
        query = self.session_query
        snapshots = self._worker_stats(query)
        processes = self._processes(supervised, snapshots, supervisor_up)
        sessions, matched, counts = merge_sessions(snapshots.values(), query)
        memcached = tuple(self._memcached(problems))
        if now - self._slow.at >= SLOW_EVERY:
            self._refresh_slow(now)
        if self._slow.directory_error:
            problems.append(self._slow.directory_error)
        backends = self._backends(snapshots, now)
        for b in backends:
            if b.health == "down":
                problems.append(f"mailbox server {b.name} does not answer on its IMAP port")

        workers = [p for p in processes if p.is_worker]
        up = [p for p in workers if p.stats is not None]
        for p in workers:
            if p.state == "RUNNING" and p.stats is None:
                problems.append(f"{p.short} runs but its stats socket does not answer")
            elif p.state not in ("RUNNING", "UNSUPERVISED"):
                problems.append(f"{p.short} is {p.state}")
        totals = self._totals(workers, up, sum(n for _, _, n in counts), now)
        self.rates.end()
        blocks, blocks_error = self._read_blocks()
        return FleetSnapshot(
            node=self.settings.node_name, taken_at=now, processes=tuple(processes),
            sessions=sessions, backends=tuple(backends), memcached=memcached,
            directory=self._slow.directory, totals=totals,
            history=tuple((k, tuple(v)) for k, v in self.history.items()),
            problems=tuple(problems), supervisor_up=supervisor_up, blocks=blocks,
            blocks_error=blocks_error, session_query=query, sessions_matched=matched,
            session_counts=counts)

    def _read_blocks(self) -> tuple[tuple[Block, ...], str]:
        """The IP blocks, or why they are unknown (memcached down is already a problem)."""
        if not getattr(self.settings, "memcached_servers", ()):
            return (), "no memcached configured: IP blocks are off"
        try:
            return tuple(self.blocks.list()), ""
        except BlocksUnavailable as exc:
            return (), str(exc)

    def _supervised(self, problems: list[str]) -> tuple[list[ProcessState], bool]:
        try:
            return self.supervisor.processes(), True
        except SupervisorError as exc:
            problems.append(str(exc))
            return [], False

    def _worker_stats(self, query: SessionQuery) -> dict[str, WorkerSnapshot]:
        return read_worker_snapshots(self.settings.run_dir, query=query)

    def _processes(self, supervised, snapshots: dict[str, WorkerSnapshot],
                   supervisor_up) -> list[Process]:
        out = []
        seen_workers = set()
        pids = set()
        for p in supervised:
            worker = is_worker_process(p.group, p.short)
            snap = snapshots.get(p.short) if worker else None
            if worker:
                seen_workers.add(p.short)
            out.append(self._with_psutil(Process(
                name=p.name, short=p.short, group=p.group, state=p.state, pid=p.pid,
                started=p.started, description=p.description,
                stats=worker_stats(snap) if snap else None),
                sockets=snap.sockets if snap else None))
            pids.add(p.pid)
        # Workers whose stats answer although supervisord does not (or runs elsewhere).
        for short, snap in snapshots.items():
            if short not in seen_workers:
                pid = int(snap.pid)
                out.append(self._with_psutil(Process(
                    name=f"{PROXY_GROUP}:{short}", short=short, group=PROXY_GROUP,
                    state="UNSUPERVISED" if not supervisor_up else "RUNNING",
                    pid=pid, started=float(snap.started), stats=worker_stats(snap)),
                    sockets=snap.sockets))
                pids.add(pid)
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]
        for pid in list(self._worker_fds):
            if pid not in pids:
                del self._worker_fds[pid]
        out.sort(key=lambda p: (not p.is_worker, p.name))
        return out

    def _worker_open_files(self, proc: psutil.Process) -> int:
        """A worker's open files, listed from /proc/<pid>/fd at most every SLOW_EVERY
        seconds: a worker with 7,000 sessions has 14,000 entries, and listing them cost
        13 ms CPU of every refresh, per worker (psutil's num_fds, about 1 µs each). And
        one stale count listed again per refresh, not all at once: with 50,000 sessions
        on 7 workers, every fifth refresh cost 100 ms otherwise. A worker seen for the
        first time is listed at once."""
        now = self.clock()
        seen = self._worker_fds.get(proc.pid)
        stale = seen is not None and not 0 <= now - seen[0] < SLOW_EVERY
        if seen is None or (stale and self._fd_listings_left > 0):
            if stale:
                self._fd_listings_left -= 1
            seen = self._worker_fds[proc.pid] = (now, proc.num_fds())
        return seen[1]

    def _with_psutil(self, p: Process, sockets: int | None = None) -> Process:
        """CPU, RSS, open files and sockets of one process. A worker reports its own
        socket count; others are counted from /proc/<pid>/fd. psutil's
        net_connections() parses every socket of the host (hundreds of ms with
        10,000 sessions), which no refresh can afford."""
        if not p.pid:
            return p
        proc = self._procs.get(p.pid)
        try:
            if proc is None:
                proc = self._procs[p.pid] = psutil.Process(p.pid)
                proc.cpu_percent(None)      # first call primes the counter
            with proc.oneshot():
                cpu = round(proc.cpu_percent(None), 1)
                rss = proc.memory_info().rss
                # A worker counts its own sockets; other processes are scanned.
                if isinstance(sockets, int):
                    files, conns = self._worker_open_files(proc), sockets
                else:
                    files, conns = proc.num_fds(), _socket_count(p.pid)
        except (psutil.Error, OSError):
            self._procs.pop(p.pid, None)
            return p
        return dataclasses.replace(p, cpu=cpu, rss=rss, open_files=files, connections=conns)

    def _memcached(self, problems) -> Iterable[Memcached]:
        for ep in self.settings.memcached_servers:
            name = str(ep)
            try:
                st = read_memcached_stats(ep.host, ep.port)
            except (OSError, ValueError) as exc:
                problems.append(f"memcached {name} down ({exc.__class__.__name__}): "
                                f"routes come from LDAP meanwhile")
                yield Memcached(endpoint=name, up=False, error=str(exc))
                continue

            def n(key):
                try:
                    return int(st.get(key, 0))
                except ValueError:
                    return 0
            yield Memcached(endpoint=name, up=True, hits=n("get_hits"), misses=n("get_misses"),
                            items=n("curr_items"), evictions=n("evictions"), bytes=n("bytes"),
                            limit=n("limit_maxbytes"), connections=n("curr_connections"),
                            uptime=n("uptime"))

    def _refresh_slow(self, now: float) -> None:
        self._slow.at = now
        from carbotui.backends.directory import DirectoryUnavailable
        try:
            servers = self.directory.servers()
            domains = self.directory.domains()
        except (DirectoryUnavailable, OSError) as exc:
            self._slow.directory_error = f"LDAP: {exc}"
            return
        self._slow.directory_error = ""
        self._slow.servers = servers
        me = servers.get(self.settings.node_name)
        views = []
        for d in sorted(domains, key=lambda d: d.name):
            cert, error = None, ""
            if d.certificate_pem:
                try:
                    cert = self._cert_cache.get(d.certificate_pem) or certificate_view(
                        d.certificate_pem)
                    self._cert_cache[d.certificate_pem] = cert
                except ValueError as exc:
                    error = f"unreadable certificate: {exc}"
            views.append(DomainView(name=d.name, virtual_hostnames=d.virtual_hostnames,
                                    virtual_ips=d.virtual_ips, certificate=cert,
                                    certificate_error=error))
        mode = (me.mail_mode if me else "") or "redirect"    # unset: Carbonio's default
        mailboxes = tuple(sorted(h for h, s in servers.items()
                                 if "mailbox" in s.services or s.lookup_target))
        self._slow.directory = DirectoryView(
            server=self.settings.node_name, mail_mode=mode, domains=tuple(views),
            mailbox_servers=mailboxes)
        self._slow.probes = {}
        for host in mailboxes:
            s = servers[host]
            self._slow.probes[host] = probe_tcp(s.address, s.ports["imap"]) if s.address else None

    def _backends(self, snapshots: dict[str, WorkerSnapshot], now: float) -> list[Backend]:
        merged: dict[str, dict] = {}
        for worker, snap in snapshots.items():
            pid = snap.pid
            for name, b in snap.backends.items():
                m = merged.setdefault(name, {"active": 0, "sessions": 0, "errors": 0,
                                             "ms": [], "rate": 0.0, "err_rate": 0.0})
                m["active"] += int(b.active)
                m["sessions"] += int(b.sessions)
                m["errors"] += int(b.errors)
                if b.sessions:
                    m["ms"].append((float(b.connect_ms), int(b.sessions)))
                m["rate"] += self.rates.per_second(("b", name, worker, pid),
                                                   int(b.sessions), now)
                m["err_rate"] += self.rates.per_second(("be", name, worker, pid),
                                                       int(b.errors), now)
        # Workers name backends by short name (mbox1); LDAP by hostname (mbox1.demo.test).
        by_short = {h.split(".", 1)[0]: h for h in self._slow.probes}
        try:
            maintenance = read_maintenance(self.settings.run_dir)
        except (OSError, ValueError):
            maintenance = set()
        out = []
        for host in self._slow.probes:
            merged.setdefault(host.split(".", 1)[0], {"active": 0, "sessions": 0, "errors": 0,
                                                      "ms": [], "rate": 0.0, "err_rate": 0.0})
        for name in sorted(merged):
            m = merged[name]
            host = by_short.get(name, name)
            weight = sum(w for _, w in m["ms"])
            ms = sum(v * w for v, w in m["ms"]) / weight if weight else 0.0
            out.append(Backend(
                name=host, active=m["active"], sessions=m["sessions"],
                sessions_per_s=round(m["rate"], 1), errors=m["errors"],
                errors_per_s=round(m["err_rate"], 1), connect_ms=round(ms, 1),
                probe_ms=(round(self._slow.probes[host], 1)
                          if self._slow.probes.get(host) is not None else None),
                probed=host in self._slow.probes,
                maintenance=host.lower() in maintenance or name.lower() in maintenance))
        return out

    def _totals(self, workers, up: list[Process], sessions: int, now: float) -> Totals:
        ok = failed = conns = 0.0
        hits = misses = 0
        for p in up:
            s = p.stats
            ok += self.rates.per_second(("ok", p.short, p.pid), s.logins_ok, now)
            failed += self.rates.per_second(("failed", p.short, p.pid), s.logins_failed, now)
            conns += self.rates.per_second(("conn", p.short, p.pid), s.connections, now)
            hits += s.cache_hits
            misses += s.cache_misses
        totals = Totals(
            sessions=sessions, workers_up=len(up),
            workers_total=len(workers),
            logins_ok_per_s=round(ok, 1), logins_failed_per_s=round(failed, 1),
            connections_per_s=round(conns, 1),
            cache_hit_ratio=hit_ratio(hits, misses))
        for key, value in (("sessions", totals.sessions), ("logins_ok", totals.logins_ok_per_s),
                           ("logins_failed", totals.logins_failed_per_s),
                           ("connections", totals.connections_per_s)):
            self.history[key].append(float(value))
        return totals

    def close(self) -> None:
        if self._directory is not None:
            self._directory.close()
        if self._blocks is not None:
            self._blocks.close()


def _socket_count(pid: int) -> int:
    count = 0
    with os.scandir(f"/proc/{pid}/fd") as fds:
        for fd in fds:
            try:
                if os.readlink(fd.path).startswith("socket:"):
                    count += 1
            except OSError:
                continue            # closed meanwhile
    return count
