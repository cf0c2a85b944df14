"""Integration fixtures: the real demo stack that `make up` started.

`make test` brings the stack up first (memcached, slapd, two Dovecots, the
proxy workers under supervisord). Tests that stop a part restore it before
they end. Nothing here is mocked.
"""
from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbotui.core import settings as config
from carbotui.backends.memcache import Memcache
from carbotui.backends.supervisor import Supervisor, SupervisorError
from carbotui.services.throttle import Throttle
from carbotui.backends.worker_sockets import read_stats_json as read_stats

REPO = Path(__file__).resolve().parents[2]
SETTINGS = config.load(REPO / "carbotui.toml")
CA = REPO / "var" / "certs" / "ca.crt"
PASSWORD = "demo-pass"
PORTS = {"imap": 10143, "imaps": 10993, "pop3": 10110, "pop3s": 10995}
WEB_PORTS = {"http": 10080, "https": 10443, "admin": 16071}
HOST = "127.0.0.1"


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(CA))


def supervisorctl(*args: str, check: bool = True) -> str:
    proc = subprocess.run([str(REPO / ".venv/bin/supervisorctl"), "-c",
                           str(REPO / "supervisord.conf"), *args],
                          capture_output=True, text=True, timeout=60)
    if check and proc.returncode not in (0, 3):   # 3: some process not running (status)
        raise AssertionError(f"supervisorctl {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def process_pid(name: str) -> int:
    out = supervisorctl("pid", name).strip()
    return int(out) if out.isdigit() else 0


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def worker_stats() -> list[dict]:
    out = []
    for sock in sorted((REPO / "var/run").glob("proxy_*.sock")):
        try:
            out.append(read_stats(str(sock)))
        except OSError:
            pass
    return out


def total(stats: list[dict], section: str, key: str) -> int:
    return sum(s[section][key] for s in stats)


class Memcached:
    """A raw memcached text-protocol client, to look at what the proxy stored."""

    def __init__(self, endpoint=SETTINGS.memcached_servers[0]):
        self.addr = (endpoint.host, endpoint.port)

    def command(self, line: bytes, until: bytes) -> bytes:
        with socket.create_connection(self.addr, timeout=3) as s:
            s.sendall(line)
            data = b""
            while not data.endswith(until):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    def get(self, key: bytes) -> bytes | None:
        reply = self.command(b"get " + key + b"\r\n", b"END\r\n")
        if not reply.startswith(b"VALUE"):
            return None
        return reply.split(b"\r\n")[1]

    def set(self, key: bytes, value: bytes, ttl: int = 300) -> None:
        reply = self.command(b"set %s 0 %d %d\r\n%s\r\n" % (key, ttl, len(value), value),
                             b"\r\n")
        assert reply == b"STORED\r\n", reply

    def delete(self, key: bytes) -> None:
        self.command(b"delete " + key + b"\r\n", b"\r\n")

    def keys(self) -> list[bytes]:
        dump = self.command(b"lru_crawler metadump all\r\n", b"END\r\n")
        return [line.split(b" ")[0][4:] for line in dump.split(b"\r\n")
                if line.startswith(b"key=")]

    def stats(self) -> dict[bytes, bytes]:
        reply = self.command(b"stats\r\n", b"END\r\n")
        return {p[1]: p[2] for p in (l.split(b" ") for l in reply.split(b"\r\n"))
                if len(p) == 3 and p[0] == b"STAT"}


class AuditTail:
    def __init__(self):
        self.path = SETTINGS.audit_log
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            # split on b"\n" as auditwatch does: never on what str.splitlines() also takes
            return [line.decode("utf-8", "replace") for line in f.read().split(b"\n") if line]

    def wait(self, *needles: str, count: int = 1, timeout: float = 5.0) -> list[str]:
        def found():
            hits = [l for l in self.lines() if all(n in l for n in needles)]
            return hits if len(hits) >= count else None
        return wait_for(found, timeout, what=f"audit line with {needles}")


def pytest_collection_modifyitems(config, items):
    """Everything under tests/stack is marked ``stack``: `pytest -m "not stack"` (or just
    `pytest tests/unit tests/tui`) runs anywhere."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack_down() -> str:
    """What is missing of the demo stack ("" when it is up), looked at once per run."""
    missing = [name for name, port in PORTS.items() if not port_open(port)]
    if not CA.exists():
        missing.append("the CA (var/certs/ca.crt)")
    return ", ".join(missing)


@pytest.fixture(autouse=True)
def proxy_up(stack_down):
    """Each stack test fails at once, saying why, when the stack is down."""
    if stack_down:
        pytest.fail(f"the demo stack is not running ({stack_down} not there): run `make up` "
                    "(make test does it for you)", pytrace=False)


def terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL if it has not ended within ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def supervisor_states(settings) -> dict:
    """The stack's supervisord processes by name; fails the test when it does not answer."""
    try:
        return {p.name: p for p in Supervisor(settings.run_dir / "supervisor.sock").processes()}
    except SupervisorError as exc:
        pytest.fail(f"these tests need the demo stack (make up): {exc}")


@pytest.fixture(scope="module")
def stack():
    """The demo's settings, once supervisord answers and a proxy worker is RUNNING (the
    live dashboard tests)."""
    settings = config.load(REPO / "carbotui.toml")
    states = supervisor_states(settings)
    if not any(p.group == "proxy" and p.running for p in states.values()):
        pytest.fail("no proxy worker is RUNNING; start the stack with make up")
    return settings


def live_source(settings):
    from carbotui.tui.source import LiveSource
    return LiveSource(settings)


def flip_mail_mode(stack, check) -> None:
    """Switch the node's mail mode from the live dashboard (screen 6, m, y), then
    ``await check(app, pilot, directory, after)`` with the new mode; the old mode is put
    back in LDAP afterwards, whatever happened."""
    from carbotui.admin.changes import Admin
    from carbotui.backends.directory import Directory
    from tests.support.tui import drive, settle

    directory = Directory(stack)
    before = directory.servers()[stack.node_name].mail_mode or "redirect"
    after = "https" if before == "redirect" else "redirect"

    async def test(app, pilot):
        await pilot.press("6")
        await settle(pilot, until=lambda a: a.snapshot.directory is not None
                     and a.screen.mail_mode == before)
        await pilot.press("m")
        await pilot.pause()
        await pilot.press("y")
        await check(app, pilot, directory, after)

    try:
        drive(test, source=live_source(stack), refresh=0.5)
    finally:
        Admin(directory).set_mail_mode(stack.node_name, before)
        directory.close()


@pytest.fixture
def audit() -> AuditTail:
    return AuditTail()


@pytest.fixture
def memcached() -> Memcached:
    return Memcached()


@pytest.fixture
def memcached_in_use():
    """Every worker is using memcached again (none still backing off after an outage
    an earlier test caused: while it backs off it fails open, by design)."""
    wait_for(lambda: all(s["cache"]["memcached_available"] for s in worker_stats()), 15,
             what="memcached in use by every worker")


def flush_routes(account: str) -> None:
    proc = subprocess.run([str(REPO / ".venv/bin/carbotui"), "prov", "flushCache", account],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


class RawImap:
    """A byte-level IMAPS client for literals and malformed input."""

    def __init__(self, port=PORTS["imaps"]):
        raw = socket.create_connection((HOST, port), timeout=10)
        self.sock = tls_context().wrap_socket(raw, server_hostname=HOST)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def close(self):
        self.sock.close()



def _connect(implicit, context_arg: str, plain, starttls: str, kind: str, port):
    """An imaplib/poplib connection to the proxy: TLS from the start on the implicit-TLS
    ports ("imaps", "pop3s"), STARTTLS/STLS on the others."""
    port = port or PORTS[kind]
    if kind.endswith("s"):
        return implicit(HOST, port, timeout=15, **{context_arg: tls_context()})
    conn = plain(HOST, port, timeout=15)
    getattr(conn, starttls)(tls_context())
    return conn


def imap_login(user: str, kind: str = "imaps", password: str = PASSWORD, port=None):
    conn = _connect(imaplib.IMAP4_SSL, "ssl_context", imaplib.IMAP4, "starttls", kind, port)
    conn.login(user, password)
    return conn


def pop3_login(user: str, kind: str = "pop3s", password: str = PASSWORD, port=None):
    conn = _connect(poplib.POP3_SSL, "context", poplib.POP3, "stls", kind, port)
    conn.user(user)
    conn.pass_(password)
    return conn


def throttle_call(method: str, *args):
    """Call one Throttle method (block, unblock, ...) on the stack's memcached, from a
    client of its own (as another worker would)."""
    async def go():
        cache = Memcache(SETTINGS.memcached_servers, timeout=1, reconnect=1)
        try:
            return await getattr(Throttle(cache, SETTINGS.throttle), method)(*args)
        finally:
            await cache.close()
    return asyncio.run(go())


def first_subject_imap(conn) -> str:
    typ, _ = conn.select("INBOX")
    assert typ == "OK"
    typ, data = conn.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    return data[0][1].decode().strip()


class CustomWorker:
    """A real worker process with its own settings and ports, for limits tests."""

    def __init__(self, tmp_path: Path, mail: dict, port_base: int, index: int = 90):
        # index: the worker number (its stats socket); two custom workers alive at once
        # need two
        text = (REPO / "carbotui.toml").read_text()
        # Every listener moves, or SO_REUSEPORT would let this worker join the real ones.
        for port in (*PORTS.values(), *WEB_PORTS.values()):
            text = text.replace(f'"127.0.0.1:{port}"', f'"127.0.0.1:{port_base + port % 1000}"')
        text = text.replace('var_dir = "var"', f'var_dir = "{REPO / "var"}"')
        for name in ("certificate", "private_key", "password_file", "upstream_ca"):
            text = text.replace(f'{name} = "var/', f'{name} = "{REPO}/var/')
        lines = []
        for line in text.splitlines():
            key = line.split("=")[0].strip()
            if key in mail:
                line = f"{key} = {mail[key]}"
            lines.append(line)
        cfg = tmp_path / "carbotui.toml"
        cfg.write_text("\n".join(lines) + "\n")
        self.ports = {k: port_base + p % 1000 for k, p in (*PORTS.items(), *WEB_PORTS.items())}
        self.log = open(tmp_path / "worker.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "carbotui.proxy", "--config", str(cfg),
                                      "--worker", str(index)], cwd=REPO, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: all(port_open(p) for p in self.ports.values()) or self.proc.poll(),
                 15, what="custom worker listening")
        assert self.proc.poll() is None, (tmp_path / "worker.log").read_text()
        # The port probes above were sessions too; start from an idle worker.
        self.stats_path = REPO / f"var/run/proxy_{index}.sock"
        # (the stats socket may come a moment after the listeners: wait for it too)
        wait_for(lambda: self.stats_path.exists()
                 and not read_stats(str(self.stats_path))["sessions"], 10,
                 what="custom worker idle")

    def stop(self):
        if self.proc.poll() is None:
            terminate(self.proc)
        self.log.close()


@pytest.fixture
def custom_worker(tmp_path):
    made = []

    def start(port_base: int = 20000, **mail):
        # below the ephemeral port range (32768+), where clients' ports live
        w = CustomWorker(tmp_path, mail, port_base)
        made.append(w)
        return w
    yield start
    for w in made:
        w.stop()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
