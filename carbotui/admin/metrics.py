"""The node's Prometheus endpoint: every worker's stats, summed, on ``[metrics] listen``.

    python -m carbotui.admin.metrics --config carbotui.toml     # GET /metrics

Runs as its own small process (supervisord's program:metrics, as user carbotui). Each
scrape asks every worker's stats socket (var/run/proxy_NN.sock, the same reader as the
dashboard: carbotui.admin.node.read_worker_snapshots) and renders what they say with a
prometheus_client custom collector; nothing is kept in the workers for it but counters.

Counters survive a worker's restart: the exporter remembers what each worker (known by
pid and start time) last reported, and when a worker comes back as a new process it adds
that to a base, so a node-wide ``_total`` never goes down while the exporter runs (the
increments between the last scrape and the restart are lost). When the exporter itself
restarts every counter starts again from what the running workers report: Prometheus
takes that drop as a counter reset, which ``rate()`` and ``increase()`` handle.
``carbotui_worker_restarts_total`` counts the new processes the exporter saw (two
restarts between two scrapes count one).

SIGTERM stops it; SIGUSR1 (logrotate's postrotate signalling a whole group) is ignored.

Labels have small fixed value sets: protocol/listener kinds, result and status classes,
mailbox server names, worker names and certificate names (from the settings and LDAP).
Never a user, an account or an IP address.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from carbotui.admin.node import read_worker_snapshots
from carbotui.backends.worker_sockets import (CONNECT_BUCKETS, SessionQuery, WorkerSnapshot,
                                              count_sessions, stats_sockets)
from carbotui.core import certs
from carbotui.core import settings as config

log = logging.getLogger("carbotui.admin.metrics")

PREFIX = "carbotui_"
COUNTS_ONLY = SessionQuery(limit=0)     # what a scrape asks the workers for: no session
# the states a session of a listener kind goes through (worker_sockets.Session.state): each
# gets a sample, 0 included, so a gauge does not vanish when nothing is open
MAIL_STATES, WEB_STATES = ("preauth", "login", "proxy"), ("http", "websocket")
# label values that always get a sample (others appear once counted: zsync, http_dav ...)
LOGIN_PROTOCOLS, RESULTS = ("imap", "pop3", "soap"), ("ok", "failed", "temporary")
LIMITS = ("ip", "user", "ip_connections")
STATES = {"imap": MAIL_STATES, "imaps": MAIL_STATES, "pop3": MAIL_STATES, "pop3s": MAIL_STATES,
          "http": WEB_STATES, "https": WEB_STATES, "admin": WEB_STATES}


# --- counters that survive worker restarts ---------------------------------------------------

class Totals:
    """Counters summed over the workers, never going down when one restarts."""

    def __init__(self) -> None:
        self._base: Counter = Counter()       # what workers that were replaced had counted
        self._last: dict[str, tuple[tuple, dict]] = {}   # worker -> (identity, its counters)
        self.restarts: Counter = Counter()    # worker -> new processes seen

    def update(self, worker: str, identity: tuple, values: dict) -> None:
        prev = self._last.get(worker)
        if prev is not None and prev[0] != identity:
            self._base.update(prev[1])
            self.restarts[worker] += 1
        self._last[worker] = (identity, values)

    @property
    def workers(self) -> set[str]:
        return set(self._last)

    def totals(self) -> Counter:
        out = Counter()
        out.update(self._base)
        for _, values in self._last.values():
            out.update(values)
        return out


def counters_of(snap: WorkerSnapshot) -> dict:
    """A worker's counters as {(metric, labels...): value}: what Totals keeps."""
    out: dict = {}

    def add(key, n) -> None:
        out[key] = out.get(key, 0) + n

    for result, by_proto in (("ok", snap.logins.ok), ("failed", snap.logins.failed),
                             ("temporary", snap.logins.temporary)):
        for proto, n in by_proto.items():
            add(("logins", str(proto), result), int(n))
    for kind, n in snap.connections.items():
        add(("connections", str(kind)), int(n))
    for limit, n in snap.throttled.items():
        add(("throttled", str(limit)), int(n))
    add(("rejected_busy",), int(snap.rejected_busy))
    add(("proxy_refused",), int(snap.proxy_refused))
    c = snap.cache
    add(("cache_hits",), int(c.hits))
    add(("cache_misses",), int(c.misses))
    add(("ldap_lookups",), int(c.ldap_lookups))
    add(("cache_poisoned",), int(c.poisoned))
    add(("memcached_errors",), int(c.memcached_errors))
    add(("ldap_searches",), int(snap.ldap_searches))
    for server, b in snap.backends.items():
        add(("backend_sessions", str(server)), int(b.sessions))
        add(("backend_errors", str(server)), int(b.errors))
    for u in snap.web.upstreams:
        add(("upstream_requests", str(u.server), str(u.kind)), int(u.requests))
        add(("upstream_errors", str(u.server), str(u.kind)), int(u.errors))
    m = snap.metrics
    add(("blocked",), int(m.blocked))
    for kind, by_upstream in m.web_responses.items():
        for upstream, by_class in by_upstream.items():
            for cls, n in by_class.items():
                add(("web_requests", str(kind), str(cls), str(upstream)), int(n))
    for kind, by_reason in m.sessions_ended.items():
        for reason, n in by_reason.items():
            add(("sessions_ended", str(kind), str(reason)), int(n))
    for server, t in m.connect.items():
        for i, n in enumerate(t.counts):
            add(("connect_bucket", str(server), i), int(n))
        add(("connect_sum", str(server)), float(t.sum))
    return out


# --- certificates ----------------------------------------------------------------------------

_VHOST_FILE = re.compile(r"^(?P<domain>.+)\.(?P<index>\d+)\.crt$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Certificates:
    """notAfter of the node's certificate and of each domain's virtual-host certificate as
    the workers serve it (run_dir/vhosts/<domain>.<worker index>.crt, written by
    carbotui/proxy/live.py). Each file is parsed once per change (mtime, size)."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[tuple, float | None, str]] = {}

    def _read(self, path: Path) -> tuple[float | None, str]:
        """(notAfter as a Unix time, first name) or (None, "") when unreadable."""
        try:
            st = path.stat()
        except OSError:
            return None, ""
        key = (st.st_mtime_ns, st.st_size)
        known = self._parsed.get(str(path))
        if known is not None and known[0] == key:
            return known[1], known[2]
        try:
            cert = certs.load_cert(path.read_bytes())
            not_after = cert.not_valid_after_utc.timestamp()
            # DNS names only: a label never holds an address, the server's own included
            names = [n for n in certs.san_names(cert) if not _is_ip(n)]
        except (OSError, ValueError) as exc:
            log.warning("certificate %s unreadable: %s", path, exc)
            not_after, names = None, []
        if len(self._parsed) > 1000:
            self._parsed.clear()
        self._parsed[str(path)] = (key, not_after, names[0] if names else "")
        return not_after, names[0] if names else ""

    def expiries(self, settings, worker_indexes: set[int]) -> list[tuple[str, str, float]]:
        """(kind, name, notAfter): kind "default" (named by its first subjectAltName) or
        "vhost" (named by its domain). Of a domain's copies, those of running workers
        count, the most recently written first (an older copy may be a replaced one)."""
        out = []
        not_after, name = self._read(Path(settings.tls_certificate))
        if not_after is not None:
            out.append(("default", name or "default", not_after))
        found: dict[str, list[tuple[bool, float, Path]]] = {}
        try:
            entries = list(os.scandir(Path(settings.run_dir) / "vhosts"))
        except OSError:
            entries = []
        for entry in entries:
            m = _VHOST_FILE.match(entry.name)
            if not m:
                continue
            try:
                mtime = entry.stat().st_mtime
            except OSError:
                continue
            found.setdefault(m["domain"], []).append(
                (int(m["index"]) in worker_indexes, mtime, Path(entry.path)))
        for domain in sorted(found):
            for _, _, path in sorted(found[domain], reverse=True):
                not_after, _ = self._read(path)
                if not_after is not None:
                    out.append(("vhost", domain, not_after))
                    break
        return out


# --- the collector ---------------------------------------------------------------------------

def _counter(name: str, doc: str, labels: list[str], samples: Iterable) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family


def _gauge(name: str, doc: str, labels: list[str], samples: Iterable) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family


class NodeCollector:
    """A prometheus_client collector: one scrape, one read of every worker's stats."""

    def __init__(self, settings, read: Callable[[Path], dict[str, WorkerSnapshot]] = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        # counts only: carbotui_sessions needs no session itself
        self.read = read or (lambda run_dir: read_worker_snapshots(run_dir, query=COUNTS_ONLY))
        self.clock = clock
        self.totals = Totals()
        self.certificates = Certificates()
        self._lock = threading.Lock()     # scrapes may come in parallel (threaded server)

    def describe(self):
        return []                          # no fixed set: families come from the workers

    def collect(self):
        with self._lock:
            started = time.perf_counter()
            snaps = self.read(self.settings.run_dir)
            for name, snap in snaps.items():
                self.totals.update(name, (snap.pid, snap.started), counters_of(snap))
            families = list(self._families(snaps))
            families.append(_gauge("scrape_duration_seconds",
                                   "Time this exporter took to ask every worker.", [],
                                   [((), round(time.perf_counter() - started, 6))]))
        return families

    def _known_workers(self, snaps) -> list[str]:
        try:
            sockets = {p.stem for p in stats_sockets(self.settings.run_dir)}
        except OSError:
            sockets = set()
        return sorted(sockets | self.totals.workers | set(snaps))

    def _families(self, snaps: dict[str, WorkerSnapshot]):
        t = self.totals.totals()

        def series(metric: str, always=()) -> list:
            """The samples of one counter; ``always``: label values that get a sample, 0
            included, before anything was counted (so the series exists from the start)."""
            found = {key[1:]: value for key, value in t.items() if key[0] == metric}
            for labels in always:
                found.setdefault(labels, 0)
            return sorted(found.items())

        def one(metric: str) -> list:
            return [((), t.get((metric,), 0))]

        live = list(snaps.values())
        workers = self._known_workers(snaps)
        listeners = sorted(getattr(self.settings, "listen", {}))
        # workers
        yield _gauge("worker_up", "1 when the worker's stats socket answered this scrape.",
                     ["worker"], [((w,), int(w in snaps)) for w in workers])
        yield _gauge("worker_start_time_seconds", "When the worker process started (Unix time).",
                     ["worker"], sorted(((n,), float(s.started)) for n, s in snaps.items()))
        yield _counter("worker_restarts", "New worker processes this exporter has seen "
                       "(a changed pid or start time).", ["worker"],
                       [((w,), self.totals.restarts.get(w, 0)) for w in workers])
        yield _gauge("worker_draining", "1 while the worker drains (SIGTERM).", ["worker"],
                     sorted(((n,), int(bool(s.draining))) for n, s in snaps.items()))
        # sessions
        open_ = Counter({(kind, state): 0 for kind in getattr(self.settings, "listen", {})
                         for state in STATES.get(kind, ())})
        for snap in live:
            counts = snap.session_counts
            if counts is None:            # a snapshot not read from the wire (tests)
                counts = count_sessions(snap.sessions)
            for kind, by_state in counts.items():
                for state, n in by_state.items():
                    open_[(str(kind), str(state))] += int(n)
        yield _gauge("sessions", "Client sessions open now, by listener and state "
                     "(preauth, login, proxy, http, websocket).", ["protocol", "state"],
                     sorted(open_.items()))
        yield _counter("connections", "Client connections accepted, by listener.",
                       ["protocol"], series("connections", [(k,) for k in listeners]))
        yield _counter("logins", "Login attempts by protocol (imap, pop3, soap) and result: "
                       "ok, failed (wrong credentials, unknown account), temporary (LDAP or "
                       "mailbox server unavailable, maintenance, timeout).",
                       ["protocol", "result"],
                       series("logins", [(p, r) for p in LOGIN_PROTOCOLS for r in RESULTS]))
        yield _counter("mail_sessions_ended", "Relayed mail sessions that ended, by listener "
                       "and why (as in sessions.log).", ["protocol", "reason"],
                       series("sessions_ended"))
        # abuse
        yield _counter("throttled", "Connections and logins refused by a limit: ip (the "
                       "per-address rate, blocked addresses included), user (failed-login "
                       "limit), ip_connections (concurrent connections per address).",
                       ["limit"], series("throttled", [(k,) for k in LIMITS]))
        yield _counter("blocked", "Connections refused because their address is blocked "
                       "(auditwatch, `carbotui blocks add`).", [], one("blocked"))
        yield _counter("rejected_busy", "Connections refused because the worker or the "
                       "address was at its connection limit.", [], one("rejected_busy"))
        yield _counter("proxy_protocol_refused", "Connections on PROXY-protocol listeners "
                       "dropped (untrusted peer, missing or malformed header).", [],
                       one("proxy_refused"))
        # routing
        yield _counter("route_cache_hits", "Routes found in the worker's memory or "
                       "memcached.", [], one("cache_hits"))
        yield _counter("route_cache_misses", "Routes not cached (looked up in LDAP).", [],
                       one("cache_misses"))
        yield _counter("route_ldap_lookups", "Route lookups that went to LDAP.", [],
                       one("ldap_lookups"))
        yield _counter("route_cache_poisoned", "Cached routes refused (naming no known "
                       "mailbox server) and deleted.", [], one("cache_poisoned"))
        yield _counter("ldap_searches", "LDAP searches made by the workers.", [],
                       one("ldap_searches"))
        yield _counter("memcached_errors", "memcached requests that failed or timed out.",
                       [], one("memcached_errors"))
        if live:
            yield _gauge("memcached_up", "1 when every worker's memcached client is "
                         "connected.", [], [((), int(all(s.cache.memcached_available
                                                         for s in live)))])
            yield _gauge("ldap_up", "1 when every worker's last LDAP refresh (every 2 s) "
                         "succeeded.", [], [((), int(not any(s.config.ldap_error
                                                             for s in live)))])
        # mailbox servers
        active = Counter()
        for snap in live:
            for server, b in snap.backends.items():
                active[str(server)] += int(b.active)
        yield _gauge("backend_sessions_active", "Relayed mail sessions open now, by mailbox "
                     "server.", ["server"], sorted(((k,), v) for k, v in active.items()))
        yield _counter("backend_sessions", "Mail sessions relayed, by mailbox server.",
                       ["server"], series("backend_sessions"))
        yield _counter("backend_errors", "Failed connects, logins that broke off and lost "
                       "connections, by mailbox server.", ["server"], series("backend_errors"))
        hist = HistogramMetricFamily(PREFIX + "backend_connect_seconds",
                                     "Connect, greeting and login at the mailbox server "
                                     "(successful logins).", labels=["server"])
        servers = sorted({key[1] for key in t if key[0] == "connect_sum"})
        bounds = [*(floatToGoString(b) for b in CONNECT_BUCKETS), "+Inf"]
        for server in servers:
            cumulative, buckets = 0, []
            for i, bound in enumerate(bounds):
                cumulative += t.get(("connect_bucket", server, i), 0)
                buckets.append((bound, cumulative))
            hist.add_metric([server], buckets, sum_value=t.get(("connect_sum", server), 0.0))
        yield hist
        # web
        yield _counter("web_requests", "Web requests answered, by listener, status class "
                       "(1xx..5xx) and upstream server (\"-\": answered by the proxy itself). "
                       "499: the client went away first.", ["listener", "status", "upstream"],
                       series("web_requests"))
        healthy: dict[tuple, bool] = {}
        active_up = Counter()
        for snap in live:
            for u in snap.web.upstreams:
                key = (str(u.server), str(u.kind))
                healthy[key] = healthy.get(key, True) and bool(u.healthy)
                active_up[key] += int(u.active)
        yield _gauge("web_upstream_healthy", "1 when every worker takes the upstream for "
                     "healthy.", ["server", "kind"],
                     sorted((k, int(v)) for k, v in healthy.items()))
        yield _gauge("web_upstream_active", "Web requests in flight, by upstream.",
                     ["server", "kind"], sorted(active_up.items()))
        yield _counter("web_upstream_requests", "Web requests sent, by upstream.",
                       ["server", "kind"], series("upstream_requests"))
        yield _counter("web_upstream_errors", "Failed connects, by upstream.",
                       ["server", "kind"], series("upstream_errors"))
        # certificates
        indexes = {int(n.rpartition("_")[2]) for n in snaps if n.rpartition("_")[2].isdigit()}
        yield _gauge("certificate_expiry_timestamp_seconds", "notAfter of the certificates "
                     "the node serves (Unix time): the default one and each domain's.",
                     ["kind", "name"],
                     [((kind, name), not_after) for kind, name, not_after in
                      self.certificates.expiries(self.settings, indexes)])


def render(collector: NodeCollector) -> bytes:
    """One scrape's text (what GET /metrics answers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


# --- the HTTP endpoint -----------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    server_version = "carbotui-metrics"
    sys_version = ""

    def do_GET(self) -> None:                 # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body, ctype, status = generate_latest(self.registry), CONTENT_TYPE_LATEST, 200
            except Exception as exc:          # noqa: BLE001 - answer 500, keep serving
                log.exception("scrape failed")
                body, ctype, status = f"scrape failed: {exc}\n".encode(), "text/plain", 500
        elif path in ("/", "/health"):
            body, ctype, status = b"carbotui metrics: GET /metrics\n", "text/plain", 200
        else:
            body, ctype, status = b"not found\n", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args) -> None:     # no access log of scrapes on stderr
        pass


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16


class MetricsServer6(MetricsServer):
    address_family = socket.AF_INET6


def serve(settings, collector: NodeCollector | None = None) -> MetricsServer:
    """A threaded HTTP server on ``settings.metrics_listen`` (not started)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector or NodeCollector(settings))
    handler = type("Handler", (_Handler,), {"registry": registry, "timeout": 10})
    ep = settings.metrics_listen
    cls = MetricsServer6 if ":" in ep.host else MetricsServer
    return cls((ep.host.strip("[]") if ep.host != "*" else "0.0.0.0", ep.port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carbotui.admin.metrics",
                                     description="the node's Prometheus endpoint")
    parser.add_argument("--config", default=os.environ.get("CARBOTUI_CONFIG", "carbotui.toml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if settings.metrics_listen is None:
        log.error("no [metrics] listen in %s: nothing to serve (set listen = "
                  "\"127.0.0.1:9100\" to export this node's metrics)", settings.path)
        return 2
    try:
        server = serve(settings)
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.metrics_listen, exc)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    # logrotate's postrotate may signal the whole group: no file to reopen here (the log
    # is stderr), and USR1's default would end the process
    signal.signal(signal.SIGUSR1, lambda *_: log.info("SIGUSR1: no log file to reopen"))
    log.info("serving http://%s/metrics for the workers in %s", settings.metrics_listen,
             settings.run_dir)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
