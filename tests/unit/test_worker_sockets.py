"""The workers' stats and control sockets and maintenance.json (carbotui/backends/worker_sockets.py):
the JSON keys are pinned (the dashboard, `carbotui stats`, the tests and the bench read
them by name), a snapshot survives the trip through JSON, a missing key is refused by
name, and both ends talk over real Unix sockets: the worker's (carbotui/proxy/stats.py,
carbotui/proxy/control.py) and the dashboard's."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from types import SimpleNamespace

import pytest

from carbotui.backends import worker_sockets as wire
from carbotui.core.settings import MailSettings, WebSettings
from carbotui.backends.directory import MailServer
from carbotui.admin.node import worker_stats
from carbotui.proxy import control
from carbotui.proxy import stats
from carbotui.proxy.context import SessionServices

# What `carbotui stats` prints for one worker, key by key in this order. A field renamed
# in worker_sockets.py renames a key: change this only with every reader of that key
# (grep tests/ bench/ for it).
KEYS = {
    "": ["worker", "pid", "time", "started", "draining", "connections", "logins", "throttled",
         "rejected_busy", "sockets", "proxy_refused", "cache", "ldap_searches", "backends",
         "maintenance", "web", "config", "sessions", "metrics", "session_counts",
         "sessions_matched"],
    "logins": ["ok", "failed", "temporary"],
    "cache": ["hits", "misses", "ldap_lookups", "poisoned", "memcached_available",
              "memcached_errors"],
    "backends.*": ["active", "sessions", "errors", "connect_ms", "maintenance"],
    "web": ["requests", "upstreams"],
    "web.upstreams.*": ["server", "port", "kind", "healthy", "active", "requests",
                        "maintenance", "errors", "idle"],
    "config": ["version", "applied_at", "mail_mode", "ldap_error", "virtual_hosts"],
    "sessions.*": ["id", "protocol", "client", "client_port", "account", "server", "state",
                   "started", "bytes_in", "bytes_out"],
    "metrics": ["blocked", "web_responses", "connect", "sessions_ended"],
    "metrics.connect.*": ["counts", "sum"],
}
# Keys added after the others: a worker older than them does not send them (read as empty).
OPTIONAL_KEYS = {("", "metrics"), ("", "session_counts"), ("", "sessions_matched")}


def objects(doc: dict, path: str = ""):
    """(path, object) of every JSON object in a snapshot with pinned keys."""
    if path in KEYS:
        yield path, doc
    for key, value in doc.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            if f"{sub}.*" in KEYS:
                for item in value.values():
                    yield from objects(item, f"{sub}.*")
            elif sub in KEYS:
                yield from objects(value, sub)
        elif isinstance(value, list) and f"{sub}.*" in KEYS:
            for item in value:
                yield from objects(item, f"{sub}.*")


def sample() -> wire.WorkerSnapshot:
    """Every field set, none to its default, every list and mapping non-empty."""
    return wire.WorkerSnapshot(
        worker="proxy_03", pid=4242, time=1700000100.5, started=1700000000.25, draining=True,
        connections={"imap": 7, "https": 2},
        logins=wire.Logins(ok={"imap": 5}, failed={"pop3": 2}, temporary={"soap": 1}),
        throttled={"ip": 3, "user": 1}, rejected_busy=4, sockets=17, proxy_refused=6,
        cache=wire.CacheStats(hits=11, misses=12, ldap_lookups=13, poisoned=14,
                              memcached_available=False, memcached_errors=15),
        ldap_searches=16,
        backends={"mbox1": wire.BackendStats(active=1, sessions=9, errors=2, connect_ms=3.5,
                                             maintenance=True)},
        maintenance=["mbox1.demo.test"],
        web=wire.WebStats(requests={"https": 21}, upstreams=[wire.UpstreamStats(
            server="mbox2", port=8080, kind="http", healthy=False, active=1, requests=30,
            maintenance=True, errors=4, idle=2)]),
        config=wire.ConfigStats(version="abc123", applied_at=1700000050.0,
                                mail_mode="https", ldap_error="LDAP down",
                                virtual_hosts=["mail.demo.test"]),
        sessions=[wire.Session(30000000001, "proxy_03", "imaps", "192.0.2.7", 50123,
                               "user01@demo.test", "mbox1", "proxy", 1700000090.125, 100, 2000)],
        metrics=wire.MetricStats(
            blocked=2, web_responses={"https": {"mbox1": {"2xx": 5}, "-": {"4xx": 1}}},
            connect={"mbox1": wire.ConnectTimes([1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 11.5)},
            sessions_ended={"imaps": {"logout": 3}}),
        # three live, two match the request's filter, one sent (its limit)
        session_counts={"imaps": {"proxy": 2}, "pop3": {"preauth": 1}}, sessions_matched=2,
    )


def test_the_keys_are_the_pinned_ones_in_their_order():
    doc = sample().to_json()
    seen = set()
    for path, obj in objects(doc):
        assert list(obj) == KEYS[path], path
        seen.add(path)
    assert seen == set(KEYS)


def test_a_snapshot_survives_json_both_ways():
    snap = sample()
    text = snap.encode()
    back = wire.WorkerSnapshot.decode(text)
    assert back == snap
    assert json.loads(back.encode()) == json.loads(text)


def _object_at(doc: dict, path: str) -> dict:
    for part in filter(None, path.split(".")):
        if part == "*":
            doc = doc[0] if isinstance(doc, list) else next(iter(doc.values()))
        else:
            doc = doc[part]
    return doc


@pytest.mark.parametrize("path,key", [pytest.param(path, key, id=f"{path or '.'}:{key}")
                                      for path, keys in KEYS.items() for key in keys
                                      if (path, key) not in OPTIONAL_KEYS])
def test_a_missing_key_is_refused_by_name(path, key):
    doc = sample().to_json()
    del _object_at(doc, path)[key]
    with pytest.raises(wire.WireError, match=repr(key)):
        wire.WorkerSnapshot.from_json(doc)


def test_a_snapshot_of_an_older_worker_has_empty_metrics():
    doc = sample().to_json()
    del doc["metrics"]
    assert wire.WorkerSnapshot.from_json(doc).metrics == wire.MetricStats()
    # no counts: it sent every session, unfiltered; counted from them
    del doc["session_counts"], doc["sessions_matched"]
    older = wire.WorkerSnapshot.from_json(doc)
    assert older.session_counts == {"imaps": {"proxy": 1}} and older.sessions_matched is None
    assert older.open_sessions == 1
    doc["metrics"] = {**sample().to_json()["metrics"],
                      "connect": {"mbox1": {"counts": [1, 2], "sum": 0.5}}}
    with pytest.raises(wire.WireError, match="counts"):
        wire.WorkerSnapshot.from_json(doc)


def test_unknown_keys_are_ignored_and_wrong_shapes_refused():
    doc = sample().to_json()
    doc["from_a_newer_worker"] = 1
    doc["cache"]["new_counter"] = 2
    doc["sessions"][0]["new_field"] = 3
    assert wire.WorkerSnapshot.from_json(doc) == sample()
    for bad in ([], {**doc, "sessions": {}}, {**doc, "sessions": [7]}, {**doc, "cache": []},
                {**doc, "backends": []}, {**doc, "web": {"requests": {}, "upstreams": {}}},
                {**doc, "session_counts": []}, {**doc, "session_counts": {"imap": 3}},
                {**doc, "session_counts": {"imap": {"proxy": "3"}}},
                {**doc, "sessions_matched": "2"}):
        with pytest.raises(wire.WireError):
            wire.WorkerSnapshot.from_json(bad)
    with pytest.raises(ValueError):
        wire.WorkerSnapshot.decode(b"[" * 100000)


def test_the_dashboard_summary_reads_the_snapshot():
    s = worker_stats(sample())
    # sessions: every live one (the counts), not the one page sent
    assert (s.sessions, s.connections, s.logins_ok, s.logins_failed, s.logins_temporary) == \
        (3, 9, 5, 2, 1)
    assert (s.cache_hits, s.cache_misses, s.ldap_lookups, s.memcached_available, s.draining) \
        == (11, 12, 13, False, True)
    assert (s.config_version, s.config_mail_mode, s.config_vhosts, s.config_error) == \
        ("abc123", "https", ("mail.demo.test",), "LDAP down")


# --- the worker's end ----------------------------------------------------------------------

class FakeSession:
    kind, client_ip, client_port, account, server, state = ("imap", "192.0.2.9", 40000,
                                                            "user02@demo.test", "mbox1", "proxy")
    started, bytes_in, bytes_out, splice = 1700000000.123456, 10, 20, object()

    def __init__(self, session_id):
        self.id = session_id
        self.closed = ""

    def shutdown(self, reason):
        self.closed = reason


def services_with_a_session(loop, run_dir) -> SessionServices:
    settings = SimpleNamespace(mail=MailSettings(), web=WebSettings(), run_dir=run_dir)
    services = SessionServices(
        settings=settings, loop=loop, index=3, audit=None, throttle=None,
        router=SimpleNamespace(hits=1, misses=2, ldap_lookups=3, poisoned=4, servers={}),
        cache=SimpleNamespace(available=True, errors=5), directory=SimpleNamespace(searches=6))
    services.use_servers({"mbox1.demo.test": MailServer(
        "mbox1.demo.test", "127.0.0.1", {"http": 8080, "admin": 7071}, lookup_target=True)})
    services.maintenance.add("mbox1.demo.test")
    session = FakeSession(services.next_session_id())
    services.sessions[session.id] = session
    services.stats.logins_ok["imap"] += 1
    services.stats.backend("mbox1").connected(4.0)
    return services


def test_a_workers_snapshot_has_the_pinned_keys(tmp_path):
    services = services_with_a_session(None, tmp_path)
    doc = stats.snapshot(services).to_json()
    for path, obj in objects(doc):
        assert list(obj) == KEYS[path], path
    assert doc["worker"] == "proxy_03" and doc["pid"] == os.getpid()
    assert doc["sockets"] == 2                      # the client's and the mailbox server's
    assert doc["backends"] == {"mbox1": {"active": 0, "sessions": 1, "errors": 0,
                                         "connect_ms": 4.0, "maintenance": True}}
    assert [u["kind"] for u in doc["web"]["upstreams"]] == ["http", "admin"]
    assert all(u["maintenance"] for u in doc["web"]["upstreams"])
    [session] = doc["sessions"]
    assert session["id"] == 30_000_000_001 and session["started"] == 1700000000.123


def test_stats_socket_to_the_dashboards_reader(tmp_path):
    async def main():
        services = services_with_a_session(asyncio.get_running_loop(), tmp_path)
        path = wire.stats_path(tmp_path, services.name)
        server = await stats.serve(services, str(path))
        try:
            snap = await asyncio.to_thread(wire.read_snapshot, path)
            raw = await asyncio.to_thread(wire.read_stats_json, path)
        finally:
            server.close()
        return services, snap, raw

    services, snap, raw = asyncio.run(main())
    expected = stats.snapshot(services)
    assert dataclasses.replace(snap, time=expected.time) == expected
    assert [p.name for p in wire.stats_sockets(tmp_path)] == ["proxy_03.sock"]
    assert raw["sessions"][0]["account"] == "user02@demo.test"
    assert snap.sessions[0].worker == "proxy_03"


def test_control_socket_kick_and_maintenance_from_the_dashboards_client(tmp_path):
    async def main():
        services = services_with_a_session(asyncio.get_running_loop(), tmp_path)
        services.maintenance.clear()
        (session,) = services.sessions.values()
        stats_server = await stats.serve(services, str(wire.stats_path(tmp_path, services.name)))
        server = await control.serve(services, wire.control_path(tmp_path, services.name))
        ctl = wire.WorkerControl(tmp_path)
        try:
            await asyncio.to_thread(ctl.kick, services.name, session.id)
            with pytest.raises(wire.WorkerControlError, match="no session 99"):
                await asyncio.to_thread(ctl.kick, services.name, 99)
            on = await asyncio.to_thread(ctl.maintenance, "MBox1.demo.test", True)
            during = set(services.maintenance)
            off = await asyncio.to_thread(ctl.maintenance, "mbox1.demo.test", False)
            bad = await asyncio.to_thread(ctl.request, services.name, {"cmd": "reboot"})
        except wire.WorkerControlError as exc:
            bad = str(exc)
        finally:
            server.close()
            stats_server.close()
        return session, on, during, off, bad, services

    session, on, during, off, bad, services = asyncio.run(main())
    assert session.closed == "kicked by an administrator"
    assert on == ["mbox1.demo.test"] and during == {"mbox1.demo.test"}
    assert off == [] and services.maintenance == set()
    assert bad == "proxy_03: unknown command 'reboot'"
    assert wire.read_maintenance(tmp_path) == set()


def test_maintenance_file_round_trip_and_refusals(tmp_path):
    assert wire.read_maintenance(tmp_path) == set()
    wire.write_maintenance(tmp_path, {"mbox2.demo.test", "mbox1.demo.test"})
    assert json.loads((tmp_path / "maintenance.json").read_text()) == \
        {"servers": ["mbox1.demo.test", "mbox2.demo.test"]}
    assert oct((tmp_path / "maintenance.json").stat().st_mode & 0o777) == "0o644"
    assert wire.read_maintenance(tmp_path) == {"mbox1.demo.test", "mbox2.demo.test"}
    # a link planted where the temporary file goes is removed, not followed
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    (tmp_path / "maintenance.tmp").symlink_to(target)
    wire.write_maintenance(tmp_path, ["MBOX3.demo.test".lower()])
    assert target.read_text() == "untouched"
    for text in ("not json", "[]", '{"servers": "mbox1"}'):
        (tmp_path / "maintenance.json").write_text(text)
        with pytest.raises(ValueError):
            wire.read_maintenance(tmp_path)
        assert control.load_maintenance(tmp_path) == set()      # the worker logs and goes on


# --- the dashboard's page: counts, and the first `limit` sessions in its order -------------

class LiveSession:
    """A worker's session as stats.snapshot reads it (MailSession's attribute names)."""
    splice = None

    def __init__(self, session_id, i):
        self.id = session_id
        self.kind = ("imap", "imaps", "pop3", "https")[i % 4]
        self.client_ip = f"192.0.2.{i % 7 + 1}"
        self.client_port = 40000 + i
        self.account = "" if i % 5 == 0 else f"User{i % 9:02d}@demo.test"
        self.server = ("mbox1.demo.test", "mbox2", "")[i % 3]
        self.state = ("preauth", "login", "proxy", "http")[i % 4]
        # ties at the millisecond the wire rounds to, and equal bytes, on purpose
        self.started = 1700000000 + (i % 6) * 0.0004 + (i // 6) * 0.01
        self.bytes_in, self.bytes_out = (i % 4) * 100, (i * 37) % 11


def services_with_sessions(index: int, n: int) -> SessionServices:
    settings = SimpleNamespace(mail=MailSettings(), web=WebSettings(), run_dir="/nonexistent")
    services = SessionServices(
        settings=settings, loop=None, index=index, audit=None, throttle=None,
        router=SimpleNamespace(hits=0, misses=0, ldap_lookups=0, poisoned=0, servers={}),
        cache=SimpleNamespace(available=True, errors=0), directory=SimpleNamespace(searches=0))
    for i in range(n):
        s = LiveSession(services.next_session_id(), i)
        services.sessions[s.id] = s
    return services


QUERIES = [wire.SessionQuery(sort=sort, reverse=reverse, terms=terms, limit=limit)
           for sort in wire.SESSION_SORT for reverse in (False, True)
           for terms in ((), ((None, "user0"),), (("protocol", "pop"), ("client", "192.0.2.1")),
                         ((None, "proxy_0"), ("worker", "_04")), (("error", "x"),),
                         (("server", "mbox"), (None, "2"), ("state", "p")), ((None, "m\0b"),))
           for limit in (0, 1, 7, None)]


def test_a_workers_page_is_the_head_of_sorting_all_its_sessions():
    services = services_with_sessions(3, 60)
    everything = stats.snapshot(services).sessions           # no query: all, unsorted
    assert len(everything) == 60
    for query in QUERIES:
        snap = stats.snapshot(services, query)
        matching = query.matching(everything)
        assert snap.sessions == query.page(matching), query
        assert snap.sessions_matched == len(matching), query
        assert snap.open_sessions == 60
    counts = stats.snapshot(services, wire.SessionQuery(limit=0)).session_counts
    assert counts == {"imap": {"preauth": 15}, "imaps": {"login": 15}, "pop3": {"proxy": 15},
                      "https": {"http": 15}}


def test_the_fleet_merges_the_workers_pages_into_the_head_of_everything():
    from carbotui.admin.node import merge_sessions
    a, b = services_with_sessions(3, 40), services_with_sessions(4, 25)
    everything = stats.snapshot(a).sessions + stats.snapshot(b).sessions
    for query in QUERIES:
        # through JSON, as the dashboard reads them
        snaps = [wire.WorkerSnapshot.decode(stats.snapshot(s, query).encode()) for s in (a, b)]
        page, matched, counts = merge_sessions(snaps, query)
        assert list(page) == query.page(query.matching(everything)), query
        assert matched == len(query.matching(everything))
        assert sum(n for _, _, n in counts) == 65
    # an older worker sends everything, unfiltered and uncut: the fleet does it
    query = wire.SessionQuery(sort="account", terms=((None, "user0"),), limit=5)
    old = stats.snapshot(b).to_json()
    del old["session_counts"], old["sessions_matched"]
    snaps = [wire.WorkerSnapshot.decode(stats.snapshot(a, query).encode()),
             wire.WorkerSnapshot.from_json(old)]
    page, matched, counts = merge_sessions(snaps, query)
    assert list(page) == query.page(query.matching(everything))
    assert matched == len(query.matching(everything))
    assert sum(n for _, _, n in counts) == 65


def test_a_request_is_read_or_refused_clearly():
    q = wire.SessionQuery(sort="bytes_in", reverse=False, terms=(("account", "user"),), limit=3)
    assert wire.parse_stats_request(wire.stats_request(q)) == q
    assert wire.parse_stats_request(wire.stats_request(None)) is None
    assert wire.parse_stats_request(b"") is None
    # terms are matched in lower case, whoever wrote them
    assert wire.parse_stats_request(b'{"sessions": {"filter": [[null, "USER"]]}}').terms == \
        ((None, "user"),)
    for bad, why in ((b"nope", "not JSON"), (b"[1]", "not a JSON object"),
                     (b'{"sessions": {"sort": "password"}}', "sessions.sort"),
                     (b'{"sessions": {"limit": -1}}', "sessions.limit"),
                     (b'{"sessions": {"limit": true}}', "sessions.limit"),
                     (b'{"sessions": {"reverse": "yes"}}', "sessions.reverse"),
                     (b'{"sessions": {"filter": [["account", ""]]}}', "a term"),
                     (b'{"sessions": {"filter": [[1, "x"]]}}', "a term"),
                     (b'{"sessions": {"filter": [["a", "x"]] }}'.replace(b'"x"', b'"' + b"x" * 300 + b'"'),
                      "a term"),
                     (b'{"sessions": {"filter": ' + json.dumps([["a", "x"]] * 17).encode() + b"}}",
                      "at most 16")):
        with pytest.raises(wire.WireError, match=why):
            wire.parse_stats_request(bad)


def test_the_stats_socket_answers_a_query_refuses_nonsense_and_serves_a_silent_client(tmp_path):
    import socket as sockets

    def silent(path) -> dict:
        """An older client: connects and reads, sends nothing."""
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data)

    def raw(path, line: bytes) -> dict:
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            try:
                sock.sendall(line)
                sock.shutdown(sockets.SHUT_WR)
            except OSError:
                pass                      # the worker may refuse before reading it all
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data)

    async def main():
        services = services_with_sessions(3, 30)
        services.loop = asyncio.get_running_loop()
        path = wire.stats_path(tmp_path, services.name)
        server = await stats.serve(services, str(path))
        query = wire.SessionQuery(sort="started", reverse=True, terms=((None, "imaps"),),
                                  limit=4)
        try:
            page = await asyncio.to_thread(wire.read_snapshot, path, 5.0, query)
            with pytest.raises(wire.WireError, match="refused the request: sessions.sort"):
                await asyncio.to_thread(wire.read_stats_json, path, 5.0,
                                        dataclasses.replace(query, sort="secret"))
            long = await asyncio.to_thread(raw, path, b"{" + b" " * 10000 + b"}\n")
            old = await asyncio.to_thread(silent, path)
            after = await asyncio.to_thread(wire.read_snapshot, path, 5.0, query)
        finally:
            server.close()
        return services, page, long, old, after

    services, page, long, old, after = asyncio.run(main())
    everything = stats.snapshot(services).sessions
    assert page.sessions == query_page(everything) and len(page.sessions) == 4
    assert page.sessions_matched == 8 and page.open_sessions == 30
    assert long == {"error": f"request: longer than {wire.STATS_MAX_REQUEST} bytes"}
    assert len(old["sessions"]) == 30                 # everything, as before
    assert after.sessions == page.sessions            # the worker goes on serving


def query_page(everything):
    q = wire.SessionQuery(sort="started", reverse=True, terms=((None, "imaps"),), limit=4)
    return q.page(q.matching(everything))
