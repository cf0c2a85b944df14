"""The two Unix sockets of a proxy worker and var/run/maintenance.json: the wire
format, both ends.

    var/run/proxy_NN.sock   stats: connect, send one request line (a SessionQuery as
                            JSON, or {} for everything), read to EOF: one JSON document
                            (a WorkerSnapshot); 0660, readable by the admin group
    var/run/proxy_NN.ctl    control: one JSON request line in, one JSON reply line out;
                            0600, the worker's user and root
    var/run/maintenance.json  {"servers": [hostname, ...]}: written by the dashboard
                            (WorkerControl.maintenance), read by every worker at start
                            and on SIGHUP

The worker builds a WorkerSnapshot (carbotui/proxy/stats.py) and sends ``to_json()``; the
dashboard (carbotui/admin/node.py) and scripts read it back with ``read_snapshot`` /
``WorkerSnapshot.from_json``. The JSON keys are the dataclass field names, so a field
renamed here is renamed on the wire: the keys are pinned by
tests/unit/test_worker_sockets.py, because `carbotui stats`, the tests and the bench
read them by name. ``from_json`` needs every field (a missing one is a WireError,
naming it) and ignores keys it does not know (a newer worker).

Sessions are the bulk of a snapshot (10,000 on a busy worker, once a second per
dashboard), so the dashboard does not ask for them all: its request (a SessionQuery)
names a sort, a filter and a limit, the worker answers its counts of every session by
protocol and state, how many match the filter, and only the first `limit` of those in
that order (the dashboard merges the workers' pages and cuts again: the same rows as
sorting everything). `{}` (what `carbotui stats` sends) and a client that sends nothing
get every session, unsorted, as before. Sessions are built positionally, unfrozen, with
no per-field conversion: a frozen dataclass's __init__ or keyword construction costs
three times as much.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from carbotui.core.lines import recv_line

STATS_SUFFIX = ".sock"
CONTROL_SUFFIX = ".ctl"
MAINTENANCE_FILE = "maintenance.json"
CONTROL_MAX_REQUEST = 4096          # bytes of one control request line
STATS_MAX_REQUEST = 4096            # bytes of one stats request line
STATS_REQUEST_WAIT = 0.5            # seconds a worker waits for it (then: everything)


class WireError(ValueError):
    """A stats document that does not have the snapshot's shape."""


# --- paths ---------------------------------------------------------------------------------

def stats_path(run_dir: str | Path, worker: str) -> Path:
    return Path(run_dir) / f"{worker}{STATS_SUFFIX}"


def control_path(run_dir: str | Path, worker: str) -> Path:
    return Path(run_dir) / f"{worker}{CONTROL_SUFFIX}"


def stats_sockets(run_dir: str | Path) -> list[Path]:
    """Every worker's stats socket in ``run_dir``, by worker name."""
    return sorted(Path(run_dir).glob(f"proxy_*{STATS_SUFFIX}"))



# --- what the dashboard asks for ------------------------------------------------------------
#
# A session's fields as the dashboard's filter box and its sorts see them (the Connections
# screen: carbotui/tui/screens/connections.py). The worker applies the same rules to its
# live sessions (carbotui/proxy/stats.py, _LIVE_SORT): keep the two tables in step
# (tests/unit/test_worker_sockets.py compares them).

FILTER_FIELDS = ("account", "client", "protocol", "server", "worker", "state")
MAX_TERMS = 16
MAX_TERM = 256                      # characters of one filter value or field name


def session_fields(s: "Session") -> dict[str, str]:
    """What the filter box matches a session against."""
    return {"account": s.account, "client": s.client, "protocol": s.protocol,
            "server": s.server, "worker": s.worker, "state": s.state}


def matches(fields: dict, terms) -> bool:
    """Every term matches: (None, word) any field containing it, (field, word) that field;
    case-insensitive substrings (``terms`` lower case, as carbotui.tui.filters.parse makes
    them). A field the thing does not have is empty: nothing matches it."""
    for name, value in terms:
        if name is None:
            if not any(value in str(v).lower() for v in fields.values()):
                return False
        elif value not in str(fields.get(name, "")).lower():
            return False
    return True


def _bytes(n) -> int:
    return n if n is not None else -1


# Sort keys as the sessions table sorts its cells (carbotui.tui.format.sort_key): the
# account "(login)" before a login, the server's short name, a wire-rounded start time.
SESSION_SORT = {
    "started": attrgetter("started"),
    "account": lambda s: s.account or "(login)",
    "client": lambda s: str(s.client),
    "bytes_in": lambda s: _bytes(s.bytes_in),
    "bytes_out": lambda s: _bytes(s.bytes_out),
    "server": lambda s: str(s.server).split(".", 1)[0],
    "worker": lambda s: str(s.worker),
    "protocol": lambda s: str(s.protocol),
    "state": lambda s: str(s.state),
    "id": attrgetter("id"),
}


@dataclass(frozen=True)
class SessionQuery:
    """Which sessions a stats request wants: those matching every term of ``terms``
    ((field or None, lower-case word), as carbotui.tui.filters.parse makes them), sorted by
    ``sort`` (descending when ``reverse``; ties in (worker, id) order, as the table's
    stable sort leaves them), at most ``limit`` of them (None: all). A key left out of
    the JSON takes the default here."""
    sort: str = "started"
    reverse: bool = True
    terms: tuple[tuple[str | None, str], ...] = ()
    limit: int | None = 200

    def to_json(self) -> dict:
        return {"sort": self.sort, "reverse": self.reverse,
                "filter": [list(t) for t in self.terms], "limit": self.limit}

    @classmethod
    def from_json(cls, raw) -> "SessionQuery":
        if not isinstance(raw, dict):
            raise WireError("sessions: not a JSON object")
        sort = raw.get("sort", cls.sort)
        if sort not in SESSION_SORT:
            raise WireError(f"sessions.sort: not one of {', '.join(SESSION_SORT)}")
        reverse = raw.get("reverse", cls.reverse)
        if not isinstance(reverse, bool):
            raise WireError("sessions.reverse: not true or false")
        limit = raw.get("limit", cls.limit)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise WireError("sessions.limit: not a count (or null: all)")
        terms = raw.get("filter", [])
        if not isinstance(terms, list) or len(terms) > MAX_TERMS:
            raise WireError(f"sessions.filter: not a list of at most {MAX_TERMS} terms")
        out = []
        for term in terms:
            if not (isinstance(term, list) and len(term) == 2
                    and (term[0] is None or isinstance(term[0], str))
                    and isinstance(term[1], str) and term[1]
                    and len(term[1]) <= MAX_TERM and len(term[0] or "") <= MAX_TERM):
                raise WireError("sessions.filter: a term is not [field or null, word]")
            out.append((term[0], term[1].lower()))
        return cls(sort=sort, reverse=reverse, terms=tuple(out), limit=limit)

    def matching(self, sessions) -> list["Session"]:
        """The wire sessions that match the terms (all of them when there are none)."""
        if not self.terms:
            return list(sessions)
        terms = self.terms
        return [s for s in sessions if matches(session_fields(s), terms)]

    def page(self, sessions) -> list["Session"]:
        """The first ``limit`` of ``sessions`` (already matching) in this order: what the
        dashboard makes of the workers' pages merged (or of an older worker's everything)."""
        rows = sorted(sessions, key=_WORKER_ID)
        rows.sort(key=SESSION_SORT[self.sort], reverse=self.reverse)   # stable: ties stay
        return rows if self.limit is None else rows[:self.limit]


_WORKER_ID = attrgetter("worker", "id")


def stats_request(query: SessionQuery | None) -> bytes:
    """The request line: None asks for everything, as a client that sends nothing."""
    return encode_line({} if query is None else {"sessions": query.to_json()})


def parse_stats_request(line: bytes) -> SessionQuery | None:
    """A worker's reading of a request line (b"" when none came): None is everything.
    Raises WireError, saying what is wrong."""
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        raise WireError("request: not JSON") from None
    if not isinstance(raw, dict):
        raise WireError("request: not a JSON object")
    if raw.get("sessions") is None:
        return None
    return SessionQuery.from_json(raw["sessions"])


def encode_error(error: str) -> bytes:
    """What a worker answers to a request it refuses."""
    return json.dumps({"error": error}).encode()


def count_sessions(sessions) -> dict[str, dict[str, int]]:
    """{protocol: {state: sessions}} of wire sessions (an older worker sends no counts)."""
    out: dict[str, dict[str, int]] = {}
    for (protocol, state), n in Counter(map(attrgetter("protocol", "state"), sessions)).items():
        out.setdefault(protocol, {})[state] = n
    return out


# --- the stats snapshot --------------------------------------------------------------------

def _from(cls, raw):
    """``cls`` from a JSON object: every field by name, unknown keys ignored. A field
    named in ``cls._OPTIONAL`` (added after the others) may be missing: it is None."""
    if not isinstance(raw, dict):
        raise WireError(f"{cls.__name__}: not a JSON object")
    optional = cls._OPTIONAL
    try:
        return cls(*[raw[name] if name in raw or name not in optional else None
                     for name in cls._FIELDS])
    except KeyError as exc:
        raise WireError(f"{cls.__name__}: no {exc.args[0]!r}") from None


def _to(obj) -> dict:
    return {name: getattr(obj, name) for name in obj._FIELDS}


def _names(cls):
    cls._FIELDS = tuple(f.name for f in dataclasses.fields(cls))
    cls._OPTIONAL = getattr(cls, "OPTIONAL", ())
    return cls


@dataclass(slots=True)
class Session:
    """One client session as a worker reports it. ``worker`` is not sent per session:
    it is the snapshot's, filled in by WorkerSnapshot.from_json. Not frozen (see the
    module's docstring): treat it as read-only."""
    id: int
    worker: str
    protocol: str                   # listener kind: imap, imaps, pop3, pop3s, http, https, admin
    client: str
    client_port: int
    account: str
    server: str                     # mailbox server short name
    state: str                      # preauth, login, proxy, http, websocket
    started: float
    bytes_in: int
    bytes_out: int

    def to_json(self) -> dict:
        return {"id": self.id, "protocol": self.protocol, "client": self.client,
                "client_port": self.client_port, "account": self.account,
                "server": self.server, "state": self.state, "started": self.started,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


@_names
@dataclass(slots=True)
class Logins:
    """Counters by protocol (imap, pop3, soap)."""
    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    temporary: dict[str, int] = field(default_factory=dict)


@_names
@dataclass(slots=True)
class CacheStats:
    """The router's lookups and the memcached client's state."""
    hits: int = 0
    misses: int = 0
    ldap_lookups: int = 0
    poisoned: int = 0
    memcached_available: bool = True
    memcached_errors: int = 0


@_names
@dataclass(slots=True)
class BackendStats:
    """One mailbox server, by short name, as seen by this worker's mail sessions."""
    active: int = 0
    sessions: int = 0
    errors: int = 0
    connect_ms: float = 0.0         # moving average of connect + greeting time
    maintenance: bool = False


@_names
@dataclass(slots=True)
class UpstreamStats:
    """One web upstream (a mailbox server's web or admin port)."""
    server: str
    port: int
    kind: str                       # http | httpssl | admin
    healthy: bool
    active: int
    requests: int
    maintenance: bool
    errors: int
    idle: int                       # kept-alive connections


@_names
@dataclass(slots=True)
class WebStats:
    requests: dict[str, int] = field(default_factory=dict)       # by listener kind
    upstreams: list[UpstreamStats] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw) -> "WebStats":
        web = _from(cls, raw)
        web.upstreams = [_from(UpstreamStats, u) for u in _list(web.upstreams, "upstreams")]
        return web

    def to_json(self) -> dict:
        return {"requests": self.requests, "upstreams": [_to(u) for u in self.upstreams]}


@_names
@dataclass(slots=True)
class ConfigStats:
    """What the worker took from LDAP, and when (carbotui/proxy/live.py)."""
    version: str = ""
    applied_at: float = 0.0
    mail_mode: str = ""
    ldap_error: str = ""
    virtual_hosts: list[str] = field(default_factory=list)


# Buckets (upper bounds, seconds) of a mailbox server's connect + greeting + login time;
# the last count of ConnectTimes is everything above the last bound (+Inf).
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@_names
@dataclass(slots=True)
class ConnectTimes:
    """Successful connects (connect, greeting and login) to one mailbox server."""
    counts: list[int] = field(default_factory=lambda: [0] * (len(CONNECT_BUCKETS) + 1))
    sum: float = 0.0                # seconds

    @classmethod
    def from_json(cls, raw) -> "ConnectTimes":
        times = _from(cls, raw)
        if not (isinstance(times.counts, list) and len(times.counts) == len(CONNECT_BUCKETS) + 1
                and all(isinstance(n, int) for n in times.counts)):
            raise WireError(f"counts: not {len(CONNECT_BUCKETS) + 1} integers")
        return times


@_names
@dataclass(slots=True)
class MetricStats:
    """Counters the Prometheus exporter reads (carbotui/admin/metrics.py), added after the
    dashboard's: a worker older than them sends no ``metrics`` (WorkerSnapshot.OPTIONAL)."""
    blocked: int = 0                # connections refused because their address is blocked
    # listener kind -> upstream server short name ("-": answered by the proxy) ->
    # status class ("2xx") -> responses
    web_responses: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    connect: dict[str, ConnectTimes] = field(default_factory=dict)   # by mailbox server
    # listener kind -> why (sessions.log's word: logout, client_closed ...) -> sessions
    sessions_ended: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw) -> "MetricStats":
        if raw is None:
            return cls()
        metrics = _from(cls, raw)
        metrics.connect = {name: ConnectTimes.from_json(t)
                           for name, t in _object(metrics.connect, "connect").items()}
        _object(metrics.web_responses, "web_responses")
        _object(metrics.sessions_ended, "sessions_ended")
        return metrics

    def to_json(self) -> dict:
        out = _to(self)
        out["connect"] = {name: _to(t) for name, t in self.connect.items()}
        return out


def _list(value, name: str) -> list:
    if not isinstance(value, list):
        raise WireError(f"{name}: not a JSON list")
    return value


def _object(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise WireError(f"{name}: not a JSON object")
    return value


@_names
@dataclass(slots=True)
class WorkerSnapshot:
    """One worker's stats socket document. The field order is the JSON key order."""
    worker: str                     # proxy_NN
    pid: int
    time: float
    started: float
    draining: bool
    connections: dict[str, int]     # accepted since start, by listener kind
    logins: Logins
    throttled: dict[str, int]       # ip | user | ip_connections
    rejected_busy: int
    # Sockets this worker holds for clients and mailbox servers: cheaper for the
    # dashboard than scanning /proc/<pid>/fd with 10,000 sessions.
    sockets: int
    proxy_refused: int              # PROXY headers missing, malformed or untrusted
    cache: CacheStats
    ldap_searches: int
    backends: dict[str, BackendStats]
    maintenance: list[str]          # hostnames, sorted
    web: WebStats
    config: ConfigStats
    # The sessions asked for (stats_request): every one, or the first `limit` that
    # match the request's filter in its order.
    sessions: list[Session]
    metrics: MetricStats = field(default_factory=MetricStats)
    # Every live session by listener kind and state ({"imaps": {"proxy": 3}}), and how
    # many match the request's filter. An older worker sends neither, and every session:
    # then the counts are made from them, and sessions_matched is None (not filtered).
    session_counts: dict[str, dict[str, int]] | None = None
    sessions_matched: int | None = None

    OPTIONAL = ("metrics", "session_counts", "sessions_matched")   # keys a worker older
                                                                   # than them does not send

    @property
    def open_sessions(self) -> int:
        """Every live session of the worker (not only those sent)."""
        counts = self.session_counts
        if counts is None:
            return len(self.sessions)
        return sum(n for by_state in counts.values() for n in by_state.values())

    def to_json(self) -> dict:
        out = _to(self)
        out["logins"] = _to(self.logins)
        out["cache"] = _to(self.cache)
        out["backends"] = {name: _to(b) for name, b in self.backends.items()}
        out["web"] = self.web.to_json()
        out["config"] = _to(self.config)
        out["sessions"] = [s.to_json() for s in self.sessions]
        out["metrics"] = self.metrics.to_json()
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_json()).encode()

    @classmethod
    def from_json(cls, raw) -> "WorkerSnapshot":
        snap = _from(cls, raw)
        snap.logins = _from(Logins, snap.logins)
        snap.cache = _from(CacheStats, snap.cache)
        snap.backends = {name: _from(BackendStats, b)
                         for name, b in _object(snap.backends, "backends").items()}
        snap.web = WebStats.from_json(snap.web)
        snap.config = _from(ConfigStats, snap.config)
        snap.metrics = MetricStats.from_json(snap.metrics)
        worker = snap.worker
        try:
            # Positional, no conversion: the worker writes these typed.
            snap.sessions = [Session(s["id"], worker, s["protocol"], s["client"],
                                     s["client_port"], s["account"], s["server"], s["state"],
                                     s["started"], s["bytes_in"], s["bytes_out"])
                             for s in _list(snap.sessions, "sessions")]
        except KeyError as exc:
            raise WireError(f"Session: no {exc.args[0]!r}") from None
        except TypeError:
            raise WireError("Session: not a JSON object") from None
        if snap.session_counts is None:
            snap.session_counts = count_sessions(snap.sessions)
            snap.sessions_matched = None
        else:
            for by_state in _object(snap.session_counts, "session_counts").values():
                if not (isinstance(by_state, dict)
                        and all(isinstance(n, int) for n in by_state.values())):
                    raise WireError("session_counts: not {protocol: {state: count}}")
            if not isinstance(snap.sessions_matched, int):
                raise WireError("sessions_matched: not a count")
        return snap

    @classmethod
    def decode(cls, data: bytes) -> "WorkerSnapshot":
        try:
            return cls.from_json(json.loads(data))
        except RecursionError:
            raise WireError("too deeply nested") from None


def read_stats_json(path: str | Path, timeout: float = 2.0,
                    query: SessionQuery | None = None) -> dict:
    """A worker's stats document as JSON (what `carbotui stats` prints): connect, send the
    request (``query``; None: every session), read to EOF. Raises OSError, or ValueError
    when it is not JSON, or WireError when the worker refused the request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(stats_request(query))
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(262144):
            chunks.append(chunk)
    doc = json.loads(b"".join(chunks))
    if isinstance(doc, dict) and set(doc) == {"error"}:
        raise WireError(f"the worker refused the request: {doc['error']}")
    return doc


def read_snapshot(path: str | Path, timeout: float = 2.0,
                  query: SessionQuery | None = None) -> WorkerSnapshot:
    """A worker's stats, typed. Raises OSError, or ValueError (WireError included) when
    the document is not a snapshot."""
    return WorkerSnapshot.from_json(read_stats_json(path, timeout, query))


# --- the control socket --------------------------------------------------------------------
#
#   {"cmd": "kick", "session": 12}                         -> {"ok": true}
#   {"cmd": "maintenance", "server": "mbox1.demo.test", "on": true}
#                                                          -> {"ok": true, "maintenance": [...]}
#   errors: {"ok": false, "error": "no session 12"}

KICK = "kick"
MAINTENANCE = "maintenance"


def kick_request(session_id: int) -> dict:
    return {"cmd": KICK, "session": session_id}


def maintenance_request(server: str, on: bool) -> dict:
    return {"cmd": MAINTENANCE, "server": server, "on": on}


def refused(error: str) -> dict:
    return {"ok": False, "error": error}


def encode_line(message: dict) -> bytes:
    return json.dumps(message).encode() + b"\n"


class WorkerControlError(RuntimeError):
    pass


class WorkerControl:
    """The dashboard's end of the control sockets (the worker's is carbotui/proxy/control.py)."""

    def __init__(self, run_dir: str | Path, timeout: float = 2.0):
        self.run_dir = Path(run_dir)
        self.timeout = timeout

    def path(self, worker: str) -> Path:
        return control_path(self.run_dir, worker)

    def workers(self) -> list[str]:
        return [p.stem for p in stats_sockets(self.run_dir)]

    def request(self, worker: str, request: dict) -> dict:
        path = self.path(worker)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(path))
                sock.sendall(encode_line(request))
                reply = recv_line(sock)
        except FileNotFoundError:
            raise WorkerControlError(f"{worker} has no control socket ({path.name}); "
                                     f"this worker version cannot take requests") from None
        except OSError as exc:
            raise WorkerControlError(f"{worker} did not answer: {exc}") from None
        try:
            answer = json.loads(reply)
        except ValueError:
            raise WorkerControlError(f"{worker} sent an unreadable reply") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error", "refused") if isinstance(answer, dict) else "refused"
            raise WorkerControlError(f"{worker}: {error}")
        return answer

    def kick(self, worker: str, session_id: int) -> None:
        self.request(worker, kick_request(session_id))

    def maintenance(self, server: str, on: bool) -> list[str]:
        """Tell every worker; maintenance.json keeps it across restarts."""
        try:
            current = read_maintenance(self.run_dir)
        except (OSError, ValueError):
            current = set()
        current = (current | {server.lower()}) if on else (current - {server.lower()})
        write_maintenance(self.run_dir, current)
        failures = []
        for worker in self.workers():
            try:
                self.request(worker, maintenance_request(server, on))
            except WorkerControlError as exc:
                failures.append(str(exc))
        if failures:
            raise WorkerControlError("; ".join(failures))
        return sorted(current)


# --- maintenance.json ----------------------------------------------------------------------

def read_maintenance(run_dir: str | Path) -> set[str]:
    """The servers in maintenance, lower case; none when there is no file. Raises
    OSError or ValueError when it cannot be read: the worker logs it, the dashboard
    shows none."""
    try:
        text = (Path(run_dir) / MAINTENANCE_FILE).read_text()
    except FileNotFoundError:
        return set()
    servers = json.loads(text)
    if not isinstance(servers, dict) or not isinstance(servers.get("servers", []), list):
        raise ValueError(f"{MAINTENANCE_FILE} is not {{\"servers\": [...]}}")
    return {str(s).lower() for s in servers.get("servers", [])}


def write_maintenance(run_dir: str | Path, servers) -> None:
    state_file = Path(run_dir) / MAINTENANCE_FILE
    tmp = state_file.with_suffix(".tmp")
    # var/run is writable by the workers' user: never follow a link planted there,
    # never write into a file someone else made (root runs this).
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o644)              # readable by the workers whatever the umask
        f.write(json.dumps({"servers": sorted(servers)}) + "\n")
    os.replace(tmp, state_file)           # workers read it whole or not at all
