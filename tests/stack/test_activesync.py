"""ActiveSync through the web front, with curl and raw sockets as the phones: routed to
the user's own server by its Basic credentials (``DOMAIN\\user`` too) or ``User=``,
audited once per login and throttled per failure, long polls (``Cmd=Ping``) held past
``read_timeout`` up to ``polling_timeout`` and streamed, draining that lets them finish.

The demo web app answers ``/Microsoft-Server-ActiveSync`` only for accounts of its own
server (401 elsewhere), holds the answer ``delay=`` seconds and says who it is
(``X-Demo-Server``), so every assertion names the server that answered. Timeouts are
proved cheaply on a worker of their own (custom_worker) with small values.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest

from carbotui.backends.worker_sockets import read_stats_json as read_stats
from carbotui.services.throttle import user_key
from tests.stack.conftest import CA, HOST, PASSWORD, WEB_PORTS, tls_context, wait_for

pytestmark = pytest.mark.usefixtures("proxy_up")

VHOST = "mail.demo.test"
HTTPS = WEB_PORTS["https"]
AS = "/Microsoft-Server-ActiveSync"
SYNC = AS + "?Cmd=Sync&DeviceId=carbotuitest&DeviceType=iPhone"
ATTACKER = "127.0.0.61"                # outside the demo's whitelist (127.0.0.1/32)


def curl(*args: str, port: int = HTTPS, timeout: float = 30) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one request made by curl."""
    cmd = ["curl", "-sS", "-i", "--max-time", str(int(timeout)), "--cacert", str(CA),
           "--resolve", f"{VHOST}:{port}:{HOST}", *args]
    out = subprocess.run(cmd, capture_output=True, timeout=timeout + 10)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def url(path: str, port: int = HTTPS) -> str:
    return f"https://{VHOST}:{port}{path}"


def basic(user: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def connect(source: str = "127.0.0.1", port: int = HTTPS, timeout: float = 20):
    raw = socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0))
    return tls_context().wrap_socket(raw, server_hostname=VHOST)


def read_response(f) -> tuple[int, dict, bytes]:
    status = f.readline()
    assert status.startswith(b"HTTP/1.1 "), status
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return int(status.split()[1]), headers, body


def raw_request(target: str, *, auth: str | None = None, source: str = "127.0.0.1",
                port: int = HTTPS, method: str = "POST", close: bool = True):
    head = f"{method} {target} HTTP/1.1\r\nHost: {VHOST}\r\nContent-Length: 0\r\n"
    if auth:
        head += f"Authorization: {auth}\r\n"
    if close:
        head += "Connection: close\r\n"
    with connect(source, port) as sock:
        sock.sendall((head + "\r\n").encode())
        return read_response(sock.makefile("rb"))


def servers_seen(make, tries: int = 24) -> set[str]:
    """Which servers answered ``make()`` (a (status, headers, body)) over a few tries:
    stops once both did (a balanced request), else tries them all (a pinned one)."""
    seen = set()
    for _ in range(tries):
        seen.add(make()[1].get("x-demo-server", "(proxy)"))
        if {"mbox1", "mbox2"} <= seen:
            break
    return seen


# ------------------------------------------------------------------- routing

@pytest.mark.parametrize("user, server", [("user02@demo.test", "mbox2"),
                                          ("user01@demo.test", "mbox1"),
                                          ("demo.test\\user02", "mbox2"),   # DOMAIN\user
                                          ("user02", "mbox2")])              # bare name
def test_activesync_reaches_the_users_server_by_its_credentials(user, server):
    # Before: balanced, so half of a phone's requests reached the wrong server.
    for _ in range(6):                        # new connections: both workers
        status, headers, body = curl("-u", f"{user}:{PASSWORD}", "-X", "POST", url(SYNC))
        assert (status, headers["x-demo-server"]) == (200, server), body
        assert body.decode().startswith(f"{server}: activesync Cmd=Sync for user0")


def test_without_credentials_activesync_goes_by_user_argument():
    for user, server in (("user02", "mbox2"), ("demo.test%5Cuser01", "mbox1")):
        for _ in range(4):
            status, headers, _ = curl("-X", "POST", url(SYNC + f"&User={user}"))
            assert (status, headers["x-demo-server"]) == (401, server)   # its own server says
            assert headers["www-authenticate"].startswith("Basic")     # who it wants


@pytest.mark.parametrize("auth", [
    "DEMO\\user02",                    # DOMAIN\user with a domain that does not exist
    "nobody@nowhere.test",
])
def test_an_unknown_domain_or_user_is_balanced_not_refused(auth):
    # Carbonio: a user that cannot be resolved to a server is balanced, never refused.
    seen = servers_seen(lambda: curl("-u", f"{auth}:{PASSWORD}", "-X", "POST", url(SYNC)))
    assert seen == {"mbox1", "mbox2"}


@pytest.mark.parametrize("auth", [
    "Basic " + base64.b64encode(b"user02").decode(),            # no colon
    "Basic ###",                                                 # not base64
    "Basic " + base64.b64encode(b"user02:" + b"x" * 3000).decode(),   # huge
    "Negotiate " + base64.b64encode(b"user02:demo-pass").decode(),
])
def test_malformed_credentials_are_balanced_and_the_worker_goes_on(auth):
    seen = servers_seen(lambda: raw_request(SYNC, auth=auth))
    assert seen == {"mbox1", "mbox2"}       # never pinned to user02's server by confusion
    assert raw_request(SYNC, auth=basic("user02@demo.test"))[1]["x-demo-server"] == "mbox2"


@pytest.mark.parametrize("query", ["&User=user02%0D%0AX-Injected:%201",
                                   "&User=..%2Fuser02", "&User=user01&User=user02"])
def test_a_user_argument_that_is_no_name_is_balanced(query):
    seen = servers_seen(lambda: raw_request(SYNC + query))
    assert seen == {"mbox1", "mbox2"}


def test_a_huge_authorization_header_is_431():
    status, headers, _ = raw_request(SYNC, auth="Basic " + "QUFB" * 5000)
    assert status == 431 and "x-demo-server" not in headers


def soap_token(user: str) -> str:
    status, _, body = curl("-H", "Content-Type: application/json", "--data",
                           '{"Body": {"AuthRequest": {"account": {"by": "name", "_content": "'
                           + user + '"}, "password": {"_content": "' + PASSWORD + '"}}}}',
                           url("/service/soap/AuthRequest"))
    assert status == 200, body
    return json.loads(body)["Body"]["AuthResponse"]["authToken"][0]["_content"]


def test_a_zauthtoken_argument_routes_like_the_cookie_and_garbage_is_balanced():
    token = soap_token("user02@demo.test")
    for _ in range(4):   # a web client's SOAP long poll carries the token in the URL
        status, headers, _ = curl("-X", "POST", "--data", "{}",
                                  url(f"/service/soap/NoOpRequest?zauthtoken={token}"))
        assert (status, headers["x-demo-server"]) == (200, "mbox2")
    for bad in ("garbage", "0_ab_zz", token[:-2], f"{token}&zauthtoken={token}"):
        seen = servers_seen(lambda: raw_request(f"/service/soap/NoOpRequest?zauthtoken={bad}"))
        assert seen == {"mbox1", "mbox2"}, bad


# ------------------------------------------------------- audit and throttle

def test_a_phone_is_audited_once_per_login_and_each_failure_once(audit, custom_worker):
    # a worker of its own: its credential cache starts empty (each worker keeps its own)
    port = custom_worker(port_base=31000).ports["https"]
    user = "user17@demo.test"
    for _ in range(8):
        assert curl("-u", f"{user}:{PASSWORD}", "-X", "POST", url(SYNC, port),
                    port=port)[0] == 200
    for _ in range(3):
        assert curl("-u", f"{user}:wrong", "-X", "POST", url(SYNC, port), port=port)[0] == 401
    fails = audit.wait(f"account={user}; protocol=zsync; error=", count=3)
    ok = [line for line in audit.lines() if f"account={user}; protocol=zsync;" in line
          and "error=" not in line]
    assert len(ok) == 1                     # one login, not eight
    assert len(fails) == 3 and "invalid password" in fails[0]
    assert not [line for line in audit.lines() if user in line
                and ("demo-pass" in line or "wrong" in line)]    # passwords never logged
    # DAV with the same credentials is the same login: nothing new
    before = len(audit.lines())
    curl("-u", f"{user}:{PASSWORD}", "-X", "PROPFIND", url(f"/dav/{user}/", port), port=port)
    assert not [l for l in audit.lines()[before:] if "protocol=http_dav" in l and user in l]


@pytest.fixture
def victim(memcached):
    name = "user05@demo.test"
    memcached.delete(user_key(name))
    yield name
    memcached.delete(user_key(name))       # the lock lasts only as long as this test


@pytest.mark.usefixtures("memcached_in_use")
def test_a_brute_force_through_activesync_is_counted_and_refused(victim, memcached, audit,
                                                                custom_worker):
    # Before: Basic-auth requests were no login to the proxy: a brute force through
    # ActiveSync or DAV was neither counted nor refused nor audited. (A worker of its
    # own: no earlier test's login of the victim is in its credential cache.)
    port = custom_worker(port_base=31000).ports["https"]
    for i in range(20):                       # the demo's user_limit: 20 failures a minute
        target = SYNC if i % 2 else f"/dav/{victim}/Calendar/"
        method = "POST" if i % 2 else "PROPFIND"
        spelling = (victim, f" {victim.upper()} ", "demo.test\\user05")[i % 3]
        status, headers, _ = raw_request(target, auth=basic(spelling, f"guess{i}"),
                                         source=ATTACKER, method=method, port=port)
        assert (status, headers.get("x-demo-server")) == (401, "mbox1"), i
    wait_for(lambda: memcached.get(user_key(victim)) == b"20", 10,
             what="20 failures, however spelled, counted on the account's key")
    audit.wait(f"account={victim};", "oip=127.0.0.61;", "error=", count=20)
    for target, method in ((SYNC, "POST"), (f"/dav/{victim}/", "PROPFIND")):
        # the right password now: refused by the proxy, the server never sees it
        status, headers, body = raw_request(target, auth=basic(victim), source=ATTACKER,
                                            method=method, port=port)
        assert status == 403 and b"Login rejected for this user" in body
        assert "x-demo-server" not in headers
    # the DOMAIN\user spelling is the same account's counter
    status, _, _ = raw_request(SYNC, auth=basic("demo.test\\user05"), source=ATTACKER,
                               port=port)
    assert status == 403
    audit.wait(f"account={victim};", "too many failed logins")


# ------------------------------------------------------------------ timeouts

def timed(fn, *args, **kw):
    start = time.monotonic()
    result = fn(*args, **kw)
    return result, time.monotonic() - start


@pytest.mark.timeout(120)
def test_long_polls_get_their_path_timeout_and_others_read_timeout(custom_worker):
    # Before: read_timeout (60 s) applied to every response head: a Ping held 75 s got
    # a 504 after 60. Here read_timeout is 2 s and polling_timeout 5 s, so the rule
    # shows in seconds: ActiveSync waits polling_timeout, the listed NoOpRequest its
    # own 8 s, an unlisted WaitSetRequest read_timeout. All run at once.
    w = custom_worker(port_base=31000, read_timeout=2, polling_timeout=5,
                      path_timeouts='{"/Microsoft-Server-ActiveSync" = "polling_timeout", '
                                    '"/service/soap/NoOpRequest" = 8}')
    port = w.ports["https"]
    cases = {
        "ping 3.5 s": (AS + "?Cmd=Ping&delay=3.5", 200, 3.5),
        "ping 7 s": (AS + "?Cmd=Ping&delay=7", 504, 5),
        "noop 3.5 s": ("/service/soap/NoOpRequest?delay=3.5", 200, 3.5),
        "waitset 3.5 s": ("/service/soap/WaitSetRequest?delay=3.5", 504, 2),
    }
    results = {}

    def run(name, target):
        results[name] = timed(raw_request, target, auth=basic("user02@demo.test"), port=port)
    threads = [threading.Thread(target=run, args=(n, c[0])) for n, c in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, (_, status, seconds) in cases.items():
        (got, headers, body), took = results[name]
        assert got == status, (name, body)
        assert seconds - 0.2 <= took < seconds + 1.5, (name, took)
        if status == 200:      # the Ping on user02's server; the NoOp balanced
            assert headers["x-demo-server"] == "mbox2" if "ping" in name \
                else headers["x-demo-server"] in ("mbox1", "mbox2")
        else:
            assert "x-demo-server" not in headers and b"did not answer in time" in body


@pytest.mark.timeout(60)
def test_an_activesync_answer_is_streamed_not_buffered(custom_worker):
    # The demo sends the head and half the body, then the rest 2 s later: the first
    # half must reach the phone at once.
    w = custom_worker(port_base=31000, read_timeout=5)
    with connect(port=w.ports["https"]) as sock:
        sock.sendall(f"POST {AS}?Cmd=Ping&then=2 HTTP/1.1\r\nHost: {VHOST}\r\n"
                     f"Authorization: {basic('user02@demo.test')}\r\nContent-Length: 0\r\n"
                     "\r\n".encode())
        f = sock.makefile("rb")
        start = time.monotonic()
        status = f.readline()
        headers = {}
        while (line := f.readline()) != b"\r\n":
            k, _, v = line.decode().partition(":")
            headers[k.lower()] = v.strip()
        size = int(headers.get("content-length") or 0)
        first = f.read(1)
        first_at = time.monotonic() - start
        rest = f.read(size - 1) if size else b""
        done_at = time.monotonic() - start
    assert status.startswith(b"HTTP/1.1 200") and (first + rest).startswith(b"mbox2:")
    assert first_at < 1.0 and done_at >= 1.8, (first_at, done_at)


def upstream_active(w) -> int:
    stats = read_stats(str(w.stats_path))
    return sum(u["active"] for u in stats["web"]["upstreams"])


@pytest.mark.timeout(60)
def test_a_phone_that_leaves_a_held_ping_frees_the_upstream_at_once(custom_worker):
    w = custom_worker(port_base=31000)
    sock = connect(port=w.ports["https"])
    sock.sendall(f"POST {AS}?Cmd=Ping&delay=60 HTTP/1.1\r\nHost: {VHOST}\r\n"
                 f"Authorization: {basic('user02@demo.test')}\r\nContent-Length: 0\r\n"
                 "\r\n".encode())
    wait_for(lambda: upstream_active(w) == 1, 10, what="the Ping held upstream")
    sock.close()
    # Before: the upstream connection stayed until the server answered (here 60 s).
    wait_for(lambda: upstream_active(w) == 0, 5, what="the upstream let go")
    wait_for(lambda: not read_stats(str(w.stats_path))["sessions"], 5, what="no session")


# ------------------------------------------------------------------ draining

def recv_all(sock) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionError, OSError):
        pass
    return data


@pytest.mark.timeout(90)
def test_draining_closes_idle_connections_and_lets_a_long_poll_finish(custom_worker):
    w = custom_worker(port_base=31000)
    port = w.ports["https"]
    idle = connect(port=port)
    idle.sendall(f"GET /health HTTP/1.1\r\nHost: {VHOST}\r\n\r\n".encode())
    assert read_response(idle.makefile("rb"))[0] == 200           # now idle, kept alive
    poll = connect(port=port)
    poll.sendall(f"POST {AS}?Cmd=Ping&delay=3 HTTP/1.1\r\nHost: {VHOST}\r\n"
                 f"Authorization: {basic('user02@demo.test')}\r\nContent-Length: 0\r\n"
                 "\r\n".encode())
    wait_for(lambda: upstream_active(w) == 1, 10, what="the Ping held upstream")
    w.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert recv_all(idle) == b""                      # closed between two requests ...
    assert time.monotonic() - start < 2               # ... at once, not after 30 s
    idle.close()
    status, headers, body = read_response(poll.makefile("rb"))
    assert (status, headers["connection"]) == (200, "close")     # finished, and says so
    assert body.startswith(b"mbox2: activesync Cmd=Ping")
    assert recv_all(poll) == b""                      # and closed after it
    poll.close()
    w.proc.wait(10)                                   # then the worker is gone, long
    assert time.monotonic() - start < 10              # before drain_timeout (30 s)


@pytest.mark.timeout(90)
def test_a_long_poll_past_drain_timeout_gets_a_clean_close(custom_worker):
    w = custom_worker(port_base=31000, drain_timeout=2)
    poll = connect(port=w.ports["https"])
    poll.sendall(f"POST {AS}?Cmd=Ping&delay=30 HTTP/1.1\r\nHost: {VHOST}\r\n"
                 f"Authorization: {basic('user02@demo.test')}\r\nContent-Length: 0\r\n"
                 "\r\n".encode())
    wait_for(lambda: upstream_active(w) == 1, 10, what="the Ping held upstream")
    w.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert recv_all(poll) == b""          # no half-written response: closed before any byte
    assert 1.5 < time.monotonic() - start < 6
    poll.close()
    w.proc.wait(10)


# ------------------------------------------------------- cost of a long poll

def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


@pytest.mark.timeout(180)
def test_a_held_long_poll_costs_about_what_an_idle_connection_does(custom_worker):
    """N idle kept-alive connections, then N Pings held beside them, on one worker: the
    RSS each adds. A held Ping has one upstream connection and one timer more, no buffer."""
    n = int(os.environ.get("CARBOTUI_LONG_POLLS", "200"))
    w = custom_worker(port_base=31000, keepalive_timeout=300)
    port = w.ports["https"]
    socks = []

    def grow(message: bytes, until) -> int:
        base = rss(w.proc.pid)
        for _ in range(n):
            s = connect(port=port)
            s.sendall(message)
            socks.append(s)
        wait_for(until, 60, what="all held")
        return rss(w.proc.pid) - base

    try:
        idle_cost = grow(f"GET /health HTTP/1.1\r\nHost: {VHOST}\r\n\r\n".encode(),
                         lambda: len(read_stats(str(w.stats_path))["sessions"]) >= n)
        poll_cost = grow(f"POST {AS}?Cmd=Ping&delay=120 HTTP/1.1\r\nHost: {VHOST}\r\n"
                         f"Authorization: {basic('user02@demo.test')}\r\n"
                         "Content-Length: 0\r\n\r\n".encode(),
                         lambda: upstream_active(w) >= n)
    finally:
        for s in socks:
            s.close()
    print(f"RSS per connection, {n} of each: idle {idle_cost / n:.0f} B, "
          f"held Ping {poll_cost / n:.0f} B")
    # the Ping's upstream socket and its request: a fraction of a TLS session more
    assert poll_cost / n < 2 * max(idle_cost / n, 16384)
