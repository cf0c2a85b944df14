"""`make bench`: carbotui side by side with nginx (the reference mail proxy) on this machine.

    .venv/bin/python bench/run.py [--seconds 3] [--quick] [--only imap,https,...]

Needs the demo stack (`make up`: Dovecots, web apps, LDAP) and bench/install.sh (nginx
with the mail module, wrk). Starts, and stops at the end whatever happens:

  - memcached for the bench node          127.0.0.1:12212
  - bench/authserver.py (nginx auth_http) 127.0.0.1:11900   routes from a fixed table
  - nginx, foreground, var/bench/nginx/   11143 11993 11110 11995 11080 11443 (+ idle 11144 11994)
  - carbotui, 2 workers                   12143 12993 12110 12995 12080 12443
  - bench/bare_proxy.py, 2 processes      12144 (the IMAP phase: the floor for Python asyncio)
  - bench/idle_backend.py (idle phases)   127.0.0.31:7143, 127.0.0.32:7143 (4 processes,
                                          SO_REUSEPORT: 50,000 sessions need 4 x 12,500 fds)

Loads: IMAP, IMAPS, POP3 sessions; HTTPS keep-alive (wrk) and HTTP/2 (h2load, when the
proxy negotiates h2 by ALPN); 1 MB responses; idle sessions (2,000 IMAP and IMAPS, 10,000
IMAP on 2 workers, 50,000 IMAPS on 7 workers: idle_50k); login_storm (10,000 IMAPS
clients started within one second against a cold route cache); py-spy profiles of one
carbotui worker under the HTTPS and IMAPS loads and cProfile of one dashboard refresh.

Every load runs in client processes of its own (bench/loadgen.py on uvloop, or wrk), on
loopback, bounded in time and count; rate loads run direct (the ceiling), then nginx,
carbotui, nginx, carbotui. Proxy CPU is utime+stime from /proc/<pid>/stat sampled right
before and after the load (nginx: master + workers; carbotui: its workers), RSS from
/proc/<pid>/status. Results: bench/results/latest.json and latest.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BENCH = REPO / "bench"
VAR = REPO / "var/bench"
LOGS = VAR / "log"
PY = str(REPO / ".venv/bin/python")
RESULTS = BENCH / "results"
CLK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

NGINX = {"imap": 11143, "imaps": 11993, "pop3": 11110, "pop3s": 11995, "http": 11080,
         "https": 11443, "idle_imap": 11144, "idle_imaps": 11994}
CARBOTUI = {"imap": 12143, "imaps": 12993, "pop3": 12110, "pop3s": 12995, "http": 12080,
            "https": 12443, "idle_imap": 12143, "idle_imaps": 12993}
AUTH = ("127.0.0.1", 11900)
MEMCACHED = ("127.0.0.1", 12212)
IDLE_BACKENDS = ("127.0.0.31:7143", "127.0.0.32:7143")
IDLE_BACKEND_PROCS = 4          # each listens on both addresses (SO_REUSEPORT)
BIG_WORKERS = 7                 # idle_50k: 50,000 sessions x 2 fds / 7 = 14,300 fds each (< 20,000)
DIRECT = {"imap": 7143, "imaps": 7993, "pop3": 7110, "pop3s": 7995}
WORKERS = 2
BARE_PORT = 12144               # bench/bare_proxy.py, the imap_floor row


# -- processes --------------------------------------------------------------------------

def cpu_times(pids) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes so far."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK, system / CLK


def cpu_seconds(pids) -> float:
    return sum(cpu_times(pids))


def rss_kb(pids) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        except OSError:
            continue
    return total


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers on {host}:{port} after {timeout:.0f}s "
                                   f"(see {LOGS})") from None
            time.sleep(0.05)


class Procs:
    """Every process the bench starts; stop() ends them by pid (SIGTERM, then SIGKILL)."""

    def __init__(self):
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO, start_new_session=True, **kw)
        self.running[name] = proc
        return proc

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 15.0) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


# -- the two proxies --------------------------------------------------------------------

NGINX_CONF = """\
# Generated by bench/run.py: the reference proxy, run in the foreground by the bench only.
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
worker_processes {workers};          # as many as carbotui's workers
worker_rlimit_nofile 20000;          # the machine's per-process limit
pid {prefix}/nginx.pid;
# {logs_note}
error_log {prefix}/error.log {error_level};

events {{
    worker_connections 19000;        # client + backend per session (+ auth_http per login)
    accept_mutex {accept_mutex};             # on for many workers: a nearly full worker stops accepting
}}

mail {{
    auth_http {auth}/auth;
    proxy on;
    proxy_pass_error_message on;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM;   # carbotui.toml's
    ssl_session_tickets off;                             # as carbotui (OP_NO_TICKET)
    imap_capabilities IMAP4rev1 ID LITERAL+ SASL-IR IDLE NAMESPACE ENABLE;
    pop3_capabilities TOP USER UIDL PIPELINING RESP-CODES AUTH-RESP-CODE;

    server {{ listen 127.0.0.1:{imap};  protocol imap; starttls off; }}
    server {{ listen 127.0.0.1:{imaps} ssl backlog=4096; protocol imap; }}
    server {{ listen 127.0.0.1:{pop3};  protocol pop3; starttls off; }}
    server {{ listen 127.0.0.1:{pop3s} ssl; protocol pop3; }}
    # idle-session loads: routed to bench/idle_backend.py by the auth server's /idle
    server {{ listen 127.0.0.1:{idle_imap};  protocol imap; starttls off; auth_http {auth}/idle; }}
    server {{ listen 127.0.0.1:{idle_imaps} ssl backlog=4096; protocol imap; auth_http {auth}/idle; }}
}}

http {{
    # Carbonio's nginx.access.log format (carbotui's access.log writes the same fields)
    log_format carbonio '$remote_addr:$remote_port - $remote_user [$time_local] '
                        '"$request_method $scheme://$host$request_uri $server_protocol" '
                        '$status $bytes_sent "$http_referer" "$http_user_agent" '
                        '"$upstream_addr" "$server_addr:$server_port"';
    access_log {access_log};
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    upstream mailbox_web {{           # round-robin over the two web apps, like carbotui
        server 127.0.0.1:8080;
        server 127.0.0.2:8080;
        keepalive 32;                 # carbotui.toml web.upstream_keepalive
    }}
    server {{
        listen 127.0.0.1:{http} reuseport;
        listen 127.0.0.1:{https} ssl http2 reuseport;   # h2 by ALPN; wrk still speaks HTTP/1.1
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM;
        ssl_session_tickets off;
        location / {{
            proxy_pass http://mailbox_web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_max_temp_file_size 0;   # stream big bodies, never spool them to disk
        }}
    }}
}}
"""


class Nginx:
    name = "nginx"
    ports = NGINX

    def __init__(self, procs: Procs):
        self.procs = procs
        self.prefix = VAR / "nginx"
        self.proc: subprocess.Popen | None = None
        self.workers = WORKERS
        self.logs = "carbonio"          # --nginx-logs

    def write_conf(self) -> Path:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        carbonio = self.logs == "carbonio"
        conf.write_text(NGINX_CONF.format(
            workers=self.workers, accept_mutex="on" if self.workers > WORKERS else "off",
            logs_note=NGINX_LOGS[self.logs],
            error_level="info" if carbonio else "warn",
            access_log=f"{self.prefix}/access.log carbonio" if carbonio else "off",
            prefix=self.prefix, auth=f"{AUTH[0]}:{AUTH[1]}",
            cert=REPO / "var/certs/default.crt", key=REPO / "var/certs/default.key", **NGINX))
        return conf

    def start(self, idle: bool = False, workers: int = WORKERS) -> None:
        self.workers = workers
        conf = self.write_conf()
        for log in ("access.log", "error.log"):      # each start's own: bounded on disk
            (self.prefix / log).unlink(missing_ok=True)
        subprocess.run(["nginx", "-t", "-q", "-p", str(self.prefix), "-c", str(conf)], check=True,
                       cwd=REPO)
        self.proc = self.procs.start("nginx", ["nginx", "-p", str(self.prefix), "-c", str(conf)])
        for port in (NGINX["imap"], NGINX["https"], NGINX["idle_imap"]):
            wait_port("127.0.0.1", port)
        deadline = time.monotonic() + 5
        while len(children(self.proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.procs.stop("nginx", signal.SIGQUIT)     # graceful: let workers close sessions

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def side_pids(self) -> list[int]:
        """Processes outside the proxy that its architecture needs per login."""
        p = self.procs.running.get("authserver")
        return [p.pid] if p else []


class Carbotui:
    name = "carbotui"
    ports = CARBOTUI

    def __init__(self, procs: Procs):
        self.procs = procs
        self.config = BENCH / "carbotui-bench.toml"
        self.workers = WORKERS

    def start(self, idle: bool = False, workers: int = WORKERS) -> None:
        self.config = BENCH / ("carbotui-idle.toml" if idle else "carbotui-bench.toml")
        self.workers = workers
        for n in range(workers):
            self.procs.start(f"carbotui_{n:02d}", [PY, "-m", "carbotui.proxy", "--config",
                                                   str(self.config), "--worker", str(n)])
        for port in (CARBOTUI["imap"], CARBOTUI["https"], CARBOTUI["pop3s"]):
            wait_port("127.0.0.1", port)
        time.sleep(0.5)                 # every worker bound and its LDAP snapshot applied

    def stop(self) -> None:
        for n in range(self.workers):
            self.procs.stop(f"carbotui_{n:02d}")

    def pids(self) -> list[int]:
        return [p.pid for n, p in self.procs.running.items() if n.startswith("carbotui_")]

    worker_pids = pids

    def side_pids(self) -> list[int]:
        p = self.procs.running.get("memcached")
        return [p.pid] if p else []

    def cold_side_pids(self) -> list[int]:
        """With a cold route cache the workers also ask the demo's slapd."""
        return self.side_pids() + demo_pids("slapd")


class BareProxy:
    """bench/bare_proxy.py in two processes (SO_REUSEPORT, as carbotui's two workers): the
    floor for a Python asyncio mail proxy on this machine, for the imap_floor row. It speaks
    IMAP only: greeting, one LOGIN line, LOGIN at the user's mailbox server, then relay."""
    name = "bare"
    ports = {"imap": BARE_PORT}

    def __init__(self, procs: Procs):
        self.procs = procs

    def start(self) -> None:
        for n in range(WORKERS):
            self.procs.start(f"bare_{n}", [PY, str(BENCH / "bare_proxy.py"), "--port",
                                           str(BARE_PORT)])
        wait_port("127.0.0.1", BARE_PORT)
        time.sleep(0.3)                 # the second process bound too

    def stop(self) -> None:
        for n in range(WORKERS):
            self.procs.stop(f"bare_{n}")

    def pids(self) -> list[int]:
        return [p.pid for n, p in self.procs.running.items() if n.startswith("bare_")]

    def side_pids(self) -> list[int]:
        return []


BACKENDS = ("mbox1", "mbox2", "web1", "web2")


def backend_pids() -> str:
    """The demo backends' pids (supervisord); a change means someone restarted one."""
    out = subprocess.run([str(REPO / ".venv/bin/supervisorctl"), "-c", str(REPO / "supervisord.conf"),
                          "pid", *BACKENDS], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def demo_pids(*programs: str) -> list[int]:
    out = subprocess.run([str(REPO / ".venv/bin/supervisorctl"), "-c", str(REPO / "supervisord.conf"),
                          "pid", *programs], capture_output=True, text=True, timeout=10)
    return [int(x) for x in out.stdout.split() if x.isdigit() and x != "0"]


def stable(run_once) -> Sample:
    """Run a load; if a demo backend was restarted meanwhile (the machine is shared), wait
    for it and run the load once more, saying so in the sample's note."""
    before = backend_pids()
    sample = run_once()
    after = backend_pids()
    if before == after:
        return sample
    print(f"  (a demo backend restarted during the {sample.target} run: running it again)",
          flush=True)
    for host, port in (("127.0.0.1", 7143), ("127.0.0.2", 7143), ("127.0.0.1", 8080),
                       ("127.0.0.2", 8080)):
        wait_port(host, port, 30)
    time.sleep(1)
    sample = run_once()
    sample.note = (sample.note + "; " if sample.note else "") + \
        "run repeated: a demo backend was restarted (outside the bench) during the first try"
    return sample


def memcached_flush() -> None:
    with socket.create_connection(MEMCACHED, timeout=2) as s:
        s.sendall(b"flush_all\r\n")
        s.recv(100)


# -- client processes -------------------------------------------------------------------

def read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"client {proc.args[2:6]} gave no answer within {timeout:.0f}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"client {proc.args[2:6]} exited: {proc.wait()}")
    return line.strip()


def clients(specs: list[list[str]]) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([PY, str(BENCH / "loadgen.py"), *spec], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
             for spec in specs]
    for p in procs:
        if read_line(p, 20) != "ready":
            raise RuntimeError("load generator did not start")
    return procs


def tell(procs, word: str) -> None:
    for p in procs:
        p.stdin.write(word + "\n")
        p.stdin.flush()


def run_clients(specs, pids, side, timeout) -> tuple[list[dict], tuple, float, float]:
    """Start, sample CPU, go, collect; returns (results, proxy (user, system) cpu s,
    side cpu s, wall s)."""
    procs = clients(specs)
    try:
        cpu0, side0, t0 = cpu_times(pids), cpu_seconds(side), time.perf_counter()
        tell(procs, "go")
        results = [json.loads(read_line(p, timeout)) for p in procs]
        cpu1, side1, t1 = cpu_times(pids), cpu_seconds(side), time.perf_counter()
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    return results, (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]), side1 - side0, t1 - t0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


# -- loads ------------------------------------------------------------------------------

@dataclass
class Sample:
    """One load run against one target."""
    target: str
    count: int = 0              # sessions, requests or responses
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0            # proxy CPU seconds
    user_cpu: float = 0.0       # of which in user space (the rest: the kernel's work)
    side_cpu: float = 0.0       # auth server (nginx) / memcached (carbotui)
    lat_ms: list = field(default_factory=list)
    p50: float | None = None
    p99: float | None = None
    note: str = ""


def mail_sessions(proto: str, tls: bool, target, seconds: float, concurrency: int) -> Sample:
    kind = proto + ("s" if tls else "")
    common = ["sessions", "--proto", proto, "--seconds", str(seconds),
              "--concurrency", str(concurrency // 2), "--max", "40000"] + (["--tls"] if tls else [])
    if target is None:                  # direct: each mailbox server its own users
        specs = [common + ["--host", "127.0.0.1", "--port", str(DIRECT[kind]), "--users", "odd"],
                 common + ["--host", "127.0.0.2", "--port", str(DIRECT[kind]), "--users", "even"]]
        pids, side, name = [], [], "direct"
    else:
        port = str(target.ports[kind])
        specs = [common + ["--port", port, "--users", "odd"],
                 common + ["--port", port, "--users", "even"]]
        pids, side, name = target.pids(), target.side_pids(), target.name
    results, (user, system), side_cpu, wall = run_clients(specs, pids, side, seconds + 40)
    s = Sample(name, seconds=max(r["elapsed"] for r in results), cpu=user + system,
               user_cpu=user, side_cpu=side_cpu)
    for r in results:
        s.count += r["n"]
        s.errors += r["errors"]
        s.lat_ms += r["lat_ms"]
        s.note = s.note or r["first_error"]
    return s


_WRK_LAT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_N = re.compile(r"(\d+) requests in ([\d.]+)(ms|s|m)")
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(urls: list[str], threads: int, connections: int, seconds: float, pids, side,
        name: str, headers: tuple = ()) -> Sample:
    """One wrk process per URL, in parallel; counts and latencies summed/merged."""
    cpu0, side0 = cpu_times(pids), cpu_seconds(side)
    extra = [arg for h in headers for arg in ("-H", h)]
    procs = [subprocess.Popen(["wrk", "-t", str(threads), "-c", str(connections),
                               "-d", f"{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
                               *extra, url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for url in urls]
    outs = [p.communicate(timeout=seconds + 30)[0] for p in procs]
    cpu1 = cpu_times(pids)
    s = Sample(name, cpu=sum(cpu1) - sum(cpu0), user_cpu=cpu1[0] - cpu0[0],
               side_cpu=cpu_seconds(side) - side0)
    p50s, p99s = [], []
    for out in outs:
        m = _WRK_N.search(out)
        if not m:
            raise RuntimeError(f"wrk output not understood:\n{out}")
        s.count += int(m.group(1))
        s.seconds = max(s.seconds, float(m.group(2)) * _UNIT[m.group(3)] / 1000)
        for q, value, unit in _WRK_LAT.findall(out):
            (p50s if q == "50" else p99s).append(float(value) * _UNIT[unit])
        for pattern in (r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        r"Non-2xx or 3xx responses: (\d+)"):
            e = re.search(pattern, out)
            if e:
                s.errors += sum(int(x) for x in e.groups())
                s.note = (s.note + " " + e.group(0)).strip()
    s.p50, s.p99 = (max(p50s) if p50s else None), (max(p99s) if p99s else None)
    return s


# -- idle sessions ----------------------------------------------------------------------

_SOURCE_NETS = iter(range(1, 250))


def sources(n: int) -> list[str]:
    """n client source addresses never used before in this run (127.<k>.0.1 ...): no
    TIME_WAIT left by an earlier phase holds their ports."""
    k = next(_SOURCE_NETS)
    return [f"127.{k}.0.{i + 1}" for i in range(n)]


def time_wait_to_idle_backends() -> int:
    """Sockets in TIME_WAIT from this machine to the idle backends: each holds one of the
    ~28,000 ephemeral ports a proxy has per backend address."""
    out = subprocess.run(["ss", "-Htan", "state", "time-wait", "(", "dst", "127.0.0.31", "or",
                          "dst", "127.0.0.32", ")"], capture_output=True, text=True, timeout=30)
    return len(out.stdout.splitlines())


def drain_time_wait(below: int = 2000, timeout: float = 65.0) -> int:
    """Wait (bounded: TIME_WAIT lasts 60 s) until few ports to the idle backends are held."""
    deadline = time.monotonic() + timeout
    while (held := time_wait_to_idle_backends()) >= below and time.monotonic() < deadline:
        time.sleep(1.0)
    return held


def idle_hold(target, kind: str, count: int, procs_n: int, hold: float, fleet=None,
              open_timeout: float = 180) -> dict:
    """Open `count` IDLE sessions through the target (fresh), measure, close. Each client
    process has its own source address."""
    base_rss = rss_kb(target.pids())
    base_worker_rss = {pid: rss_kb([pid]) for pid in target.worker_pids()}
    base_fds = {pid: open_fds(pid) for pid in target.worker_pids()}
    per = count // procs_n
    specs = [["idle", "--port", str(target.ports[kind]), "--count", str(per), "--offset", str(i),
              "--open-concurrency", "48", "--source", src] + (["--tls"] if kind.endswith("s") else [])
             for i, src in enumerate(sources(procs_n))]
    cprocs = clients(specs)
    out: dict = {"target": target.name, "kind": kind, "requested": per * procs_n,
                 "workers": len(target.worker_pids()), "client_processes": procs_n}
    try:
        cpu0, t0 = cpu_seconds(target.pids()), time.perf_counter()
        tell(cprocs, "go")
        opened = [json.loads(read_line(p, open_timeout)) for p in cprocs]
        out["open_seconds"] = time.perf_counter() - t0
        out["open_cpu_us"] = None
        out["opened"] = sum(o["opened"] for o in opened)
        out["failed"] = sum(o["failed"] for o in opened)
        out["first_error"] = next((o["first_error"] for o in opened if o["first_error"]), "")
        if out["opened"]:
            out["open_cpu_us"] = (cpu_seconds(target.pids()) - cpu0) / out["opened"] * 1e6
        time.sleep(1.0)
        cpu_hold0 = cpu_seconds(target.pids())
        time.sleep(hold)
        out["hold_seconds"] = hold
        out["hold_cpu_ms"] = (cpu_seconds(target.pids()) - cpu_hold0) * 1000
        rss = rss_kb(target.pids())
        out["rss_kb_before"], out["rss_kb_after"] = base_rss, rss
        out["rss_kb_per_session"] = (rss - base_rss) / out["opened"] if out["opened"] else None
        out["sessions_per_worker"] = [(open_fds(pid) - base_fds.get(pid, 0)) // 2
                                      for pid in target.worker_pids()]
        out["rss_mb_per_worker"] = [round(rss_kb([pid]) / 1024, 1) for pid in target.worker_pids()]
        out["rss_growth_mb_per_worker"] = [
            round((rss_kb([pid]) - base_worker_rss.get(pid, 0)) / 1024, 1)
            for pid in target.worker_pids()]
        if fleet is not None:
            out["dashboard"] = fleet(target)
        tell(cprocs, "check")
        checks = [json.loads(read_line(p, 60)) for p in cprocs]
        out["alive"] = sum(c["alive"] for c in checks)
        out["dropped"] = sum(c["dropped"] for c in checks)
        tell(cprocs, "close")
        for p in cprocs:
            read_line(p, 90)
    finally:
        for p in cprocs:
            try:
                p.stdin.close()
                p.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
    return out


def login_storm(target, count: int, procs_n: int, spread: float, timeout: float,
                side: list[int]) -> dict:
    """`count` IMAPS clients started evenly within `spread` seconds against a freshly started
    proxy with a cold route cache; each is given `timeout` s to be logged in. Peak RSS of the
    proxy is sampled every 0.1 s."""
    import threading
    per = count // procs_n
    specs = [["storm", "--tls", "--port", str(target.ports["idle_imaps"]), "--count", str(per),
              "--offset", str(i), "--spread", str(spread), "--timeout", str(timeout),
              "--source", src] for i, src in enumerate(sources(procs_n))]
    pids = target.pids()
    base_rss = rss_kb(pids)
    peak = [base_rss]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.1):
            peak[0] = max(peak[0], rss_kb(pids))

    cprocs = clients(specs)
    watcher = threading.Thread(target=watch, daemon=True)
    try:
        cpu0, side0 = cpu_times(pids), cpu_seconds(side)
        go = time.time()
        watcher.start()
        tell(cprocs, "go")
        results = [json.loads(read_line(p, timeout + spread + 30)) for p in cprocs]
        cpu1, side1 = cpu_times(pids), cpu_seconds(side)
    finally:
        stop.set()
        for p in cprocs:
            try:
                p.stdin.close()
                p.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
    lat = [x for r in results for x in r["lat_ms"]]
    ok = sum(r["n"] for r in results)
    last = [r["last_ok_at"] for r in results if r["last_ok_at"]]
    cpu = sum(cpu1) - sum(cpu0)
    side_cpu = side1 - side0
    return {"target": target.name, "requested": per * procs_n, "logged_in": ok,
            "failed": sum(r["failed"] for r in results), "workers": len(target.worker_pids()),
            "client_processes": procs_n, "spread_s": spread, "timeout_s": timeout,
            "started_within_s": max(r["last_start_at"] for r in results) - go,
            "last_login_s": (max(last) - go) if last else None,
            "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99), "max_ms": max(lat, default=None),
            "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
            "rss_kb_before": base_rss, "rss_kb_peak": peak[0],
            "cpu_s": cpu, "user_cpu_s": cpu1[0] - cpu0[0], "side_cpu_s": side_cpu,
            "cpu_us_per_login": cpu / ok * 1e6 if ok else None,
            "side_cpu_us_per_login": side_cpu / ok * 1e6 if ok else None,
            "total_cpu_us_per_login": (cpu + side_cpu) / ok * 1e6 if ok else None}


def negotiates_h2(port: int) -> bool:
    """Does the HTTPS listener on this port pick h2 when a client offers it by ALPN?"""
    ctx = ssl.create_default_context(cafile=str(REPO / "var/certs/ca.crt"))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
                ctx.wrap_socket(raw, server_hostname="bench.demo.test") as tls:
            return tls.selected_alpn_protocol() == "h2"
    except (OSError, ssl.SSLError):
        return False


_H2_DONE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout")
_H2_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s)")
_H2_MEAN = re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)")


def h2load(url: str, seconds: float, connections: int, streams: int, pids, side,
           name: str) -> Sample:
    """h2load (nghttp2), one thread: `connections` TLS connections, `streams` concurrent
    streams on each, for `seconds`."""
    cpu0, side0 = cpu_times(pids), cpu_seconds(side)
    out = subprocess.run(["h2load", "-t", "1", "-c", str(connections), "-m", str(streams),
                          "-D", str(max(1, round(seconds))), url], capture_output=True,
                         text=True, timeout=seconds + 60).stdout
    cpu1 = cpu_times(pids)
    s = Sample(name, cpu=sum(cpu1) - sum(cpu0), user_cpu=cpu1[0] - cpu0[0],
               side_cpu=cpu_seconds(side) - side0)
    done, fin = _H2_DONE.search(out), _H2_FINISHED.search(out)
    if not done or not fin:
        raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
    s.count = int(done.group(4))
    s.errors = sum(int(x) for x in done.group(5, 6, 7))
    s.seconds = float(fin.group(1)) * _UNIT[fin.group(2)] / 1000
    mean = _H2_MEAN.search(out)
    if mean:
        s.note = f"h2load mean request time {float(mean.group(1)) * _UNIT[mean.group(2)]:.2f} ms"
    return s


def dashboard_cost(target) -> dict:
    """CPU of one carbotui dashboard refresh (Fleet.collect) with the sessions live."""
    from carbotui.core import settings as config
    from carbotui.admin.node import Fleet

    settings = config.load(target.config)
    fleet = Fleet(settings)
    workers = target.pids()
    times, worker_ms, sessions = [], [], 0
    for i in range(4):
        w0, c0 = cpu_seconds(workers), time.process_time()
        snap = fleet.collect()
        times.append((time.process_time() - c0) * 1000)
        worker_ms.append((cpu_seconds(workers) - w0) * 1000)
        sessions = snap.totals.sessions    # every live one; snap.sessions is one page
        time.sleep(0.3)
    import cProfile
    import pstats
    prof = cProfile.Profile(time.process_time)     # CPU, not the wait for the workers
    prof.enable()
    fleet.collect()
    prof.disable()
    return {"first_ms": times[0], "steady_ms": statistics.median(times[1:]),
            "max_ms": max(times), "all_ms": times, "sessions_seen": sessions,
            "session_rows_sent": len(snap.sessions),
            "worker_cpu_ms_per_refresh": statistics.median(worker_ms[1:]),
            "profile_top": cprofile_top(pstats.Stats(prof), 12)}


def cprofile_top(stats, n: int) -> list[dict]:
    """The n functions with the most own CPU time (cProfile's tottime) in one refresh."""
    total = sum(v[2] for v in stats.stats.values()) or 1.0
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [{"function": f"{func} ({Path(path).name}:{line})" if line else func,
             "calls": v[1], "own_ms": round(v[2] * 1000, 2), "own_pct": round(100 * v[2] / total, 1),
             "cum_ms": round(v[3] * 1000, 2)}
            for (path, line, func), v in rows]


PYSPY = REPO / ".venv/bin/py-spy"
PYSPY_HZ = 250


def pyspy_profile(pid: int, seconds: float, run_load, top: int = 15) -> dict:
    """Sample one worker with py-spy (--nonblocking: the worker is never paused; Python
    frames only: time in C — uvloop's loop, OpenSSL, the socket calls — is charged to the
    innermost Python frame, uvloop's `run` when no callback is running) while run_load()
    runs (not a measured run); the top
    functions by own time (the innermost frame of each sample) and the share of samples
    each module's frames are in."""
    if not PYSPY.exists():
        return {"error": "py-spy is not installed (bench/install.sh installs it)"}
    raw = VAR / f"pyspy-{pid}.txt"
    spy = subprocess.Popen([str(PYSPY), "record", "--pid", str(pid), "--duration",
                            str(max(1, round(seconds))), "--rate", str(PYSPY_HZ), "--format", "raw",
                            "--nonblocking", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)                       # py-spy attached
    sample = run_load()
    try:
        err = spy.communicate(timeout=seconds + 30)[1]
    except subprocess.TimeoutExpired:
        spy.kill()
        err = "py-spy did not finish"
    if not raw.exists():
        return {"error": f"py-spy wrote nothing: {err.strip()[-300:]}"}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [_frame(f) for f in stack.split(";")[1:]]     # [0] is the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count
    raw.unlink()
    rows = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:top]
    packages: dict[str, int] = {}
    for f, c in own.items():
        where = f.rpartition(" (")[2].rstrip(")")
        key = where.split("/")[0] if "/" in where else where
        packages[key] = packages.get(key, 0) + c
    return {"samples": total, "rate_hz": PYSPY_HZ, "load": sample.target, "load_count": sample.count,
            "own_by_package": [{"package": k, "own_pct": round(100 * c / total, 1)} for k, c in
                               sorted(packages.items(), key=lambda kv: kv[1], reverse=True)[:8]],
            "top_own": [{"function": f, "own_pct": round(100 * c / total, 1),
                         "incl_pct": round(100 * inclusive[f] / total, 1)} for f, c in rows]}


def perf_profile(pids: list[int], seconds: float, run_load, top: int = 12) -> dict:
    """`perf record` (software cpu-clock, user and kernel) of these processes while
    run_load() runs: the share of their CPU samples in each shared object (the
    interpreter, OpenSSL, uvloop, the kernel, nginx itself) and the top symbols. CPython
    3.11 has no perf map, so Python code is all `libpython`."""
    if not shutil.which("perf") or not pids:
        return {"error": "perf is not installed (linux-perf)"}
    data = VAR / "perf.data"
    rec = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", ",".join(map(str, pids)),
                            "-o", str(data), "--", "sleep", str(max(1, round(seconds)))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    sample = run_load()
    try:
        err = rec.communicate(timeout=seconds + 30)[1]
    except subprocess.TimeoutExpired:
        rec.kill()
        err = "perf did not finish"
    if not data.exists():
        return {"error": f"perf wrote nothing: {err.strip()[-300:]}"}

    def report(sort: str) -> list[tuple[float, str]]:
        out = subprocess.run(["perf", "report", "-i", str(data), "--sort", sort, "--stdio",
                              "--percent-limit", "0.5"], capture_output=True, text=True,
                             timeout=120).stdout
        rows = []
        for line in out.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(.*\S)", line)
            if m and not line.startswith("#"):
                rows.append((float(m.group(1)), re.sub(r"\s+", " ", m.group(2))))
        return rows

    dsos, syms = report("dso"), report("dso,sym")
    data.unlink()
    return {"load": sample.target, "load_count": sample.count,
            "by_object": [{"object": d, "pct": v} for v, d in dsos[:8]],
            "top_symbols": [{"symbol": d, "pct": v} for v, d in syms[:top]]}


def _frame(f: str) -> str:
    """'data_received (carbotui/proxy/mail.py:123)' -> 'data_received (proxy/mail.py)'."""
    name, _, where = f.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(where).parts
    return f"{name} ({'/'.join(parts[-2:])})" if where else name


# -- report -----------------------------------------------------------------------------

def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    import uvloop
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "wrk"], capture_output=True,
                           text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "os": _os_name(),
            "python": platform.python_version(), "uvloop": uvloop.__version__,
            "openssl": ssl.OPENSSL_VERSION, "nginx": nginx_v.split("/", 1)[-1],
            "wrk": wrk_v, "loadavg_at_start": os.getloadavg()[0],
            "open_files_limit": _nofile()}


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _nofile() -> int:
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def summarize(samples: list[Sample], unit: str) -> dict:
    """Totals over the runs of one target (A B A B: both runs pooled)."""
    count = sum(s.count for s in samples)
    seconds = sum(s.seconds for s in samples)
    lat = [x for s in samples for x in s.lat_ms]
    measured = samples[0].target != "direct"
    out = {"runs": len(samples), "count": count, "errors": sum(s.errors for s in samples),
           "rate": count / seconds if seconds else 0.0,
           "per_run_rate": [round(s.count / s.seconds, 1) if s.seconds else 0 for s in samples],
           "cpu_us": (sum(s.cpu for s in samples) / count * 1e6) if count and measured else None,
           "user_cpu_us": (sum(s.user_cpu for s in samples) / count * 1e6)
           if count and measured else None,
           "side_cpu_us": (sum(s.side_cpu for s in samples) / count * 1e6)
           if count and measured else None,
           "total_cpu_us": (sum(s.cpu + s.side_cpu for s in samples) / count * 1e6)
           if count and measured else None,
           "unit": unit, "notes": sorted({s.note for s in samples if s.note})}
    if lat:
        out["p50_ms"], out["p99_ms"] = pct(lat, 0.50), pct(lat, 0.99)
    else:
        p50 = [s.p50 for s in samples if s.p50 is not None]
        p99 = [s.p99 for s in samples if s.p99 is not None]
        out["p50_ms"] = statistics.median(p50) if p50 else None
        out["p99_ms"] = max(p99) if p99 else None
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


TARGETS = [
    # (id, load, what, "rate"|"cpu"|"total", comparison, threshold); op None: reported only
    ("imap_rate", "imap", "IMAP sessions/s", "rate", ">=", 1.0),
    ("imap_cpu", "imap", "IMAP CPU per session", "cpu", "<=", 1.4),
    ("pop3_rate", "pop3", "POP3 sessions/s", "rate", ">=", 1.0),
    ("pop3_cpu", "pop3", "POP3 CPU per session", "cpu", "<=", 1.4),
    ("imaps_rate", "imaps", "IMAPS sessions/s", "rate", ">=", 0.9),
    ("imaps_cpu", "imaps", "IMAPS CPU per session", "cpu", "<=", 1.3),
    ("imaps_total_cpu", "imaps", "IMAPS total cost per login, µs CPU (proxy + nginx's auth "
     "server / carbotui's memcached)", "total", None, None),
    ("https_rate", "https_small", "HTTPS keep-alive requests/s", "rate", ">=", 0.85),
    ("https_cpu", "https_small", "HTTPS keep-alive CPU per request", "cpu", "<=", 2.0),
    ("h2_rate", "https_h2", "HTTP/2 requests/s (h2load)", "rate", None, None),
    ("h2_cpu", "https_h2", "HTTP/2 CPU per request", "cpu", None, None),
    ("mb_rate", "https_1mb", "1 MB responses over HTTPS, MB/s", "rate", ">=", 0.9),
]


def verdict(value, op, threshold):
    if value is None:
        return "not measured"
    if op is None:
        return "reported"
    return "met" if (value >= threshold if op == ">=" else value <= threshold) else "NOT met"


def evaluate(rates: dict, idle: dict) -> list[dict]:
    rows = []
    for tid, load, what, metric, op, threshold in TARGETS:
        r = rates.get(load, {})
        n, c = r.get("nginx"), r.get("carbotui")
        key = {"rate": "rate", "cpu": "cpu_us", "total": "total_cpu_us"}[metric]
        value = ratio(c and c[key], n and n[key])
        row = {"id": tid, "what": what + " (carbotui ÷ nginx)", "nginx": n and n[key],
               "carbotui": c and c[key], "value": value,
               "target": f"{op} {threshold}" if op else "report",
               "verdict": verdict(value, op, threshold)}
        if c is None and "carbotui" in r.get("not_available", ()):
            row["carbotui"], row["verdict"] = "not available", "not available"
        rows.append(row)
    n, b = rates.get("imap", {}).get("nginx"), rates.get("imap", {}).get("bare")
    if b is not None:
        rows.append({"id": "imap_floor_cpu", "what": "IMAP CPU per session of a bare uvloop "
                     "proxy (bench/bare_proxy.py: LOGIN relayed, no checks, logs or timers), "
                     "the floor for Python asyncio (bare ÷ nginx)", "nginx": n and n["cpu_us"],
                     "carbotui": b["cpu_us"], "value": ratio(b["cpu_us"], n and n["cpu_us"]),
                     "target": "report", "verdict": "reported"})
    imap_n = idle.get("nginx", {}).get("idle_imap", {}).get("rss_kb_per_session")
    imap_c = idle.get("carbotui", {}).get("idle_imap", {}).get("rss_kb_per_session")
    v = ratio(imap_c, imap_n)
    rows.append({"id": "idle_rss_imap", "what": "RSS per idle IMAP session (carbotui ÷ nginx)",
                 "nginx": imap_n, "carbotui": imap_c, "value": v, "target": "<= 1.0",
                 "verdict": verdict(v, "<=", 1.0)})
    tls_c = idle.get("carbotui", {}).get("idle_imaps", {}).get("rss_kb_per_session")
    tls_n = idle.get("nginx", {}).get("idle_imaps", {}).get("rss_kb_per_session")
    rows.append({"id": "idle_rss_imaps", "what": "RSS per idle IMAPS session, KB (carbotui; 2,000 sessions)",
                 "nginx": tls_n, "carbotui": tls_c, "value": tls_c, "target": "<= 26 KB",
                 "verdict": verdict(tls_c, "<=", 26.0)})
    big = idle.get("carbotui", {}).get("idle_10k", {})
    held = big.get("opened") == big.get("requested") and big.get("alive") == big.get("requested") \
        and big.get("dropped") == 0 and big.get("failed") == 0
    rows.append({"id": "idle_10k", "what": "10,000 idle IMAP sessions held, none dropped (carbotui)",
                 "nginx": _held(idle.get("nginx", {}).get("idle_10k", {})),
                 "carbotui": _held(big), "value": big.get("alive"), "target": "10000, 0 dropped",
                 "verdict": ("met" if held else "NOT met") if big else "not measured"})
    huge = idle.get("carbotui", {}).get("idle_50k", {})
    huge_n = idle.get("nginx", {}).get("idle_50k", {})
    if huge:
        want_n = huge.get("requested")
        held = huge.get("alive") == want_n and huge.get("dropped") == 0 and huge.get("failed") == 0
        rows.append({"id": "idle_50k", "what": "50,000 idle IMAPS sessions held on one node "
                     f"({huge.get('workers')} workers), sessions alive at the check",
                     "nginx": _held(huge_n), "carbotui": _held(huge), "value": huge.get("alive"),
                     "target": f"{want_n}, 0 dropped",
                     "verdict": "error" if "error" in huge else ("met" if held else "NOT met")})
        rows.append({"id": "idle_50k_rss", "what": "RSS per idle IMAPS session at 50k, KB",
                     "nginx": huge_n.get("rss_kb_per_session"),
                     "carbotui": huge.get("rss_kb_per_session"),
                     "value": huge.get("rss_kb_per_session"), "target": "<= 26 KB",
                     "verdict": verdict(huge.get("rss_kb_per_session"), "<=", 26.0)})
    dash = big.get("dashboard", {})
    rows.append({"id": "dashboard", "what": "Dashboard refresh CPU with 10k sessions, ms (Fleet.collect)",
                 "nginx": None, "carbotui": dash.get("steady_ms"), "value": dash.get("steady_ms"),
                 "target": "<= 30 ms", "verdict": verdict(dash.get("steady_ms"), "<=", 30.0)})
    dash = huge.get("dashboard", {})
    if huge:
        rows.append({"id": "dashboard_50k",
                     "what": "Dashboard refresh CPU with 50k sessions, ms (Fleet.collect)",
                     "nginx": None, "carbotui": dash.get("steady_ms"),
                     "value": dash.get("steady_ms"), "target": "<= 100 ms",
                     "verdict": verdict(dash.get("steady_ms"), "<=", 100.0)})
    return rows


def evaluate_storm(storm: dict) -> list[dict]:
    n, c = storm.get("nginx", {}), storm.get("carbotui", {})
    if not n and not c:
        return []
    value = ratio(c.get("last_login_s"), n.get("last_login_s"))
    ok = value is not None and value <= 1.3 and c.get("failed") == 0 and \
        c.get("logged_in") == c.get("requested")
    rows = [{"id": "login_storm", "what": f"login_storm: {c.get('requested') or n.get('requested')} "
             "IMAPS clients started within 1 s, cold route cache: time until the last is logged "
             "in, s (carbotui ÷ nginx)", "nginx": n.get("last_login_s"),
             "carbotui": c.get("last_login_s"), "value": value, "target": "<= 1.3, 0 failed",
             "verdict": "not measured" if value is None else ("met" if ok else "NOT met")},
            {"id": "login_storm_failed", "what": "login_storm: clients not logged in within 60 s",
             "nginx": n.get("failed"), "carbotui": c.get("failed"), "value": c.get("failed"),
             "target": "0", "verdict": verdict(c.get("failed"), "<=", 0)},
            {"id": "login_storm_total_cpu", "what": "login_storm: total cost per login, µs CPU "
             "(proxy + auth server / memcached + slapd) (carbotui ÷ nginx)",
             "nginx": n.get("total_cpu_us_per_login"), "carbotui": c.get("total_cpu_us_per_login"),
             "value": ratio(c.get("total_cpu_us_per_login"), n.get("total_cpu_us_per_login")),
             "target": "report", "verdict": "reported"}]
    return rows


def _value(row: dict) -> str:
    """The value as the verdict saw it: a ratio that rounds to its threshold (0.998 for
    >= 1.0) gets a third decimal, so the table never shows "1.00 NOT met"."""
    value, digits = row["value"], 2
    threshold = row["target"].split()[-1]
    if isinstance(value, float) and threshold.replace(".", "", 1).isdigit() \
            and f"{value:.2f}" == f"{float(threshold):.2f}":
        digits = 3
    return fmt(value, digits)


def _held(d: dict) -> str | None:
    if not d:
        return None
    return (f"{d.get('alive')}/{d.get('requested')} alive, {d.get('dropped')} dropped, "
            f"{d.get('failed')} failed")


def fmt(x, digits=2) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


LOAD_TITLES = {
    "imap": "IMAP session (LOGIN, SELECT, LOGOUT)", "imaps": "IMAPS session",
    "pop3": "POP3 session (USER, PASS, STAT, QUIT)", "pop3s": "POP3S session",
    "https_small": "HTTPS GET /health, keep-alive", "http_small": "HTTP GET /health, keep-alive",
    "https_small_close": "HTTPS GET /health, Connection: close (diagnostic)",
    "https_1mb": "HTTPS 1 MB response", "http_1mb": "HTTP 1 MB response",
}


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [f"# carbotui vs nginx — `make bench` ({report['finished']})", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['os']}, "
           f"kernel {m['kernel']}; Python {m['python']}, uvloop {m['uvloop']}, {m['openssl']}; "
           f"nginx {m['nginx']}; wrk {m['wrk']}. Load average at start {m['loadavg_at_start']:.2f} "
           f"(the machine is shared). Everything — clients, proxies, backends — on these "
           f"{m['cores']} cores, over loopback. Wall time {report['wall_seconds']:.0f} s.", "",
           "## Targets (carbotui ÷ nginx, same run; CPU and memory: lower is better)", "",
           "| target | nginx | carbotui | value | goal | |", "|---|---|---|---|---|---|"]
    for r in report["targets"]:
        out.append(f"| {r['what']} | {fmt(r['nginx'])} | {fmt(r['carbotui'])} | "
                   f"{_value(r)} | {r['target']} | **{r['verdict']}** |")
    out += ["", "## Rate loads (direct = straight to the backend, the ceiling)", "",
            "| load | target | rate | p50 ms | p99 ms | proxy CPU µs/op | of which user | side CPU µs/op | total CPU µs/op | errors | per-run rate |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for load, by_target in report["rates"].items():
        for name in ("direct", "nginx", "carbotui"):
            r = by_target.get(name)
            if not r:
                continue
            unit = r["unit"]
            out.append(f"| {LOAD_TITLES.get(load, load)} | {name} | {fmt(r['rate'])} {unit} | "
                       f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['cpu_us'])} | "
                       f"{fmt(r.get('user_cpu_us'))} | {fmt(r['side_cpu_us'])} | "
                       f"{fmt(r.get('total_cpu_us'))} | {r['errors']} | "
                       f"{', '.join(fmt(x) for x in r['per_run_rate'])} |")
    notes = [f"{LOAD_TITLES.get(load, load)}, {name}: {'; '.join(r['notes'])}"
             for load, by_target in report["rates"].items()
             for name, r in by_target.items() if isinstance(r, dict) and r.get("notes")]
    notes += [f"{LOAD_TITLES.get(load, load)}: not available on {', '.join(by_target['not_available'])} "
              "(its HTTPS listener does not select h2 by ALPN)"
              for load, by_target in report["rates"].items() if by_target.get("not_available")]
    if notes:
        out += ["", "Errors seen by the clients (wrk counts a connection the server closed "
                "after a response as a read error; the responses themselves are counted):", ""]
        out += [f"- {n}" for n in notes]
    out += ["", "Proxy CPU = user + system time of the proxy's processes; \"of which user\" is "
            "the part spent in the proxy's own code (the rest is the kernel's TCP/TLS work "
            "on its behalf). "
            "Side CPU: nginx's auth server (bench/authserver.py, one HTTP request per "
            "login) and carbotui's memcached; not in the proxy CPU figures the targets use. "
            "Total = proxy + side: the whole bill of a login or request. "
            "Direct HTTP runs one wrk per web app (2 in parallel).", "",
            "## Idle sessions (LOGIN, SELECT, IDLE; each measured on a freshly started proxy)", "",
            "| target | sessions | opened | failed | alive at check | dropped | RSS before → after MB | "
            "RSS per session KB | sessions per worker | RSS per worker MB | open s | proxy CPU µs per open |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, phases in report["idle"].items():
        for phase, d in phases.items():
            if "error" in d:
                out.append(f"| {name} | {phase}: {d['error']} | | | | | | | | | | |")
                continue
            out.append(f"| {name} | {phase.replace('idle_', '')} {d['requested']} | {d['opened']} | "
                       f"{d['failed']} | {d.get('alive')} | {d.get('dropped')} | "
                       f"{d['rss_kb_before'] / 1024:.0f} → {d['rss_kb_after'] / 1024:.0f} | "
                       f"{fmt(d['rss_kb_per_session'])} | {d.get('sessions_per_worker')} | "
                       f"{d.get('rss_mb_per_worker', '')} | "
                       f"{fmt(d['open_seconds'])} | {fmt(d['open_cpu_us'])} |")
    for phase in ("idle_10k", "idle_50k"):
        dash = report["idle"].get("carbotui", {}).get(phase, {}).get("dashboard")
        if not dash:
            continue
        out += ["", f"Dashboard at {phase} (`carbotui.admin.node.Fleet(...).collect()` in the "
                f"bench process, {dash['sessions_seen']} live sessions seen): first refresh "
                f"{dash['first_ms']:.0f} ms CPU (includes the LDAP/certificate refresh), "
                f"steady {dash['steady_ms']:.0f} ms, max {dash['max_ms']:.0f} ms; the workers "
                f"spend {dash['worker_cpu_ms_per_refresh']:.0f} ms CPU per refresh serving their "
                f"stats sockets. Top functions by own CPU time in one refresh (cProfile, "
                f"process_time; its own overhead inflates the total):", "",
                "| function | calls | own CPU ms | own % | cumulative ms |", "|---|---|---|---|---|"]
        out += [f"| `{r['function']}` | {r['calls']} | {r['own_ms']} | {r['own_pct']} | {r['cum_ms']} |"
                for r in dash.get("profile_top", [])]
    storm = report.get("storm", {})
    if storm:
        out += ["", "## login_storm (IMAPS clients started within 1 s, cold route cache)", "",
                "| target | clients | logged in | failed | started within s | last login s | "
                "p50 ms | p99 ms | max ms | peak RSS MB | proxy CPU µs/login | side CPU µs/login | "
                "total CPU µs/login |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, d in storm.items():
            if "error" in d:
                out.append(f"| {name} | {d['requested']}: {d['error']} |" + " |" * 11)
                continue
            out.append(f"| {name} | {d['requested']} | {d['logged_in']} | {d['failed']} | "
                       f"{d['started_within_s']:.2f} | {fmt(d['last_login_s'])} | "
                       f"{fmt(d['p50_ms'])} | {fmt(d['p99_ms'])} | {fmt(d['max_ms'])} | "
                       f"{d['rss_kb_peak'] / 1024:.0f} | {fmt(d['cpu_us_per_login'])} | "
                       f"{fmt(d['side_cpu_us_per_login'])} | {fmt(d['total_cpu_us_per_login'])} |")
        errors = [f"{n}: {d['first_error']}" for n, d in storm.items() if d.get("first_error")]
        if errors:
            out += ["", "First error seen: " + "; ".join(errors)]
    profiles = report.get("profiles", {})
    if profiles:
        out += ["", "## Profiles (py-spy, one carbotui worker of 2, separate runs)", ""]
        for name, d in profiles.items():
            if "error" in d:
                out += [f"- {name}: {d['error']}"]
                continue
            out += [f"{name}: {d['samples']} samples at {d['rate_hz']} Hz while "
                    f"{d['load_count']} operations ran; own = innermost frame, incl = anywhere "
                    "on the stack.", "", "| function | own % | incl % |", "|---|---|---|"]
            out += [f"| `{r['function']}` | {r['own_pct']} | {r['incl_pct']} |"
                    for r in d["top_own"]]
            out += ["", "Own time by package (directory of the innermost frame's file): " + ", ".join(
                f"{r['package']} {r['own_pct']}%" for r in d.get("own_by_package", [])), ""]
    perf = report.get("perf", {})
    if perf:
        out += ["", "## Where the workers' CPU goes (perf record, cpu-clock, user + kernel, "
                "all workers of each proxy, separate runs)", ""]
        for load, by in perf.items():
            for name, d in by.items():
                if "error" in d:
                    out += [f"- {load}, {name}: {d['error']}"]
                    continue
                out += [f"{load}, {name} ({d['load_count']} operations): by object: " + ", ".join(
                    f"{r['object']} {r['pct']}%" for r in d["by_object"]) + "; top symbols: " +
                    ", ".join(f"`{r['symbol']}` {r['pct']}%" for r in d["top_symbols"][:8]), ""]
    if report.get("phase_seconds"):
        out += ["", "Wall time per phase, s: " + ", ".join(
            f"{k} {v:.0f}" for k, v in report["phase_seconds"].items())]
    out += ["", "## How it was measured", ""] + [f"- {line}" for line in report["method"]]
    return "\n".join(out) + "\n"


# What the nginx reference logs (--nginx-logs), for the method list
NGINX_LOGS = {
    "carbonio": "logging as a Carbonio proxy node does: error_log at info (the default "
                "zimbraReverseProxyLogLevel; the mail module writes a line there for each "
                "connection and login) and an access log in Carbonio's nginx.access.log "
                "format, one unbuffered write per request, as carbotui writes access.log, "
                "sessions.log and audit.log",
    "off": "no access log, error_log at warn (--nginx-logs off: the bench before "
           "2026-12-02), while carbotui still writes access.log, sessions.log and audit.log",
}

METHOD = [
    "Rate loads: bench/loadgen.py (uvloop) in 2 client processes (odd users / even users), "
    "or wrk; runs in the order direct, nginx, carbotui, nginx, carbotui; rates and CPU pooled "
    "over both runs of a target, latency percentiles over all its sessions.",
    "Proxy CPU: utime+stime from /proc/<pid>/stat right before `go` and after the last "
    "client answered; nginx = master + 2 workers, carbotui = its 2 workers.",
    "Cached route: nginx asks bench/authserver.py (fixed table, no password check; odd "
    "users → 127.0.0.1, even → 127.0.0.2); carbotui finds the routes in its memcached "
    "(warmed before the loads), LDAP is not asked. Both log in to the same Dovecots.",
    "carbotui runs bench/carbotui-bench.toml (the demo settings with starttls off, login "
    "throttling off, own ports, memcached and var_dir); nginx var/bench/nginx/nginx.conf "
    "(worker_processes 2, starttls off on the plain ports, same certificate and ciphers, "
    "upstream keepalive 32, {nginx_logs}).",
    "The machine is shared: before and after every rate run the bench reads the demo "
    "backends' pids from supervisord; a run during which one was restarted (by someone "
    "else's tests) is run again, and its note says so.",
    "carbotui's plain HTTP port only redirects (mail mode) — it never proxies — so 1 MB "
    "over HTTP is measured for nginx and direct only.",
    "Idle sessions: bench/idle_backend.py (asyncio IMAP, any password) on 127.0.0.31:7143 "
    "and 127.0.0.32:7143 is the mailbox server for both proxies: nginx via the auth "
    "server's /idle route, carbotui via bench/carbotui-idle.toml whose [hosts] table maps "
    "mbox1.demo.test / mbox2.demo.test to those addresses (routes still from LDAP, port "
    "7143 from LDAP). RSS = sum over the proxy's processes (/proc/<pid>/statm), delta "
    "from the freshly started proxy to all sessions in IDLE, divided by the sessions. "
    "The idle backend runs as 4 processes sharing both addresses (SO_REUSEPORT).",
    "idle_50k: 50,000 IMAPS sessions in IDLE on one node of 7 workers for each proxy "
    "(nginx: worker_processes 7, worker_connections 19000, accept_mutex on so that a "
    "nearly full worker stops accepting; carbotui: 7 workers with SO_REUSEPORT), from 4 "
    "client processes of 12,500 sessions, each from its own source address (127.k.0.n, "
    "fresh for every phase; bound with IP_BIND_ADDRESS_NO_PORT, since a plain bind(addr, 0) "
    "takes its port from every proxy's own connects to the backends; the phase waits until "
    "fewer than 2,000 ports to the idle backends are in TIME_WAIT); per-worker "
    "RSS and sessions (open descriptors / 2) after all are in IDLE; the dashboard is "
    "measured with the 50,000 live.",
    "login_storm: 10,000 IMAPS clients (4 processes x 2,500, own source addresses) started "
    "evenly over 1 s against a freshly started proxy (2 workers each) with a cold route "
    "cache (the bench memcached flushed; carbotui asks LDAP; nginx's auth server has no "
    "cache); each client: connect, TLS, greeting, LOGIN, tagged OK (its latency), LOGOUT; "
    "not logged in within 60 s = failed. Value: carbotui's time from the start until the "
    "last client is logged in ÷ nginx's. Peak RSS sampled every 0.1 s. Side CPU: carbotui's "
    "memcached + the demo slapd (shared with other users of the machine), nginx's auth server. "
    "The clients' own TLS handshakes share the 2 cores, so the times include them.",
    "HTTP/2: h2load (nghttp2), 1 thread, 16 connections x 10 streams, GET /health, when the "
    "proxy's HTTPS listener selects h2 by ALPN (nginx: `listen ... ssl http2`); a proxy "
    "that does not is reported as not available.",
    "perf: `perf record -F 499` (cpu-clock) of all the workers of each proxy during a "
    "separate HTTPS keep-alive and IMAPS run; `perf report --sort dso` and `dso,sym`.",
    "Profiles: py-spy record --nonblocking at 250 Hz of one carbotui worker during a "
    "separate (unmeasured) HTTPS keep-alive run, HTTP/2 run (when it negotiates h2) and "
    "IMAPS session run; the dashboard's "
    "refresh under cProfile once, after the timed refreshes.",
]


# -- main -------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=5.0, help="length of one rate run")
    p.add_argument("--concurrency", type=int, default=16, help="mail sessions in flight")
    p.add_argument("--only", default="",
                   help="comma list: imap,imaps,pop3,https,h2,mb,profile,idle,idle_50k,storm")
    p.add_argument("--idle-count", type=int, default=2000)
    p.add_argument("--big-count", type=int, default=10000)
    p.add_argument("--huge-count", type=int, default=50000, help="idle_50k sessions")
    p.add_argument("--storm-count", type=int, default=10000, help="login_storm clients")
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--output", default=str(RESULTS / "latest"))
    p.add_argument("--nginx-logs", choices=("carbonio", "off"), default="carbonio",
                   help="carbonio: nginx logs as a Carbonio proxy node does (access log in "
                        "Carbonio's format, error_log info), as carbotui always does; off: "
                        "no access log, error_log warn (the bench before 2026-12-02)")
    args = p.parse_args()
    only = set(filter(None, args.only.split(",")))

    def want(x):
        return not only or x in only

    started = time.time()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))    # inherited by every child
    procs = Procs()
    phase_t = [time.time()]

    def phase_done(name: str) -> None:
        now = time.time()
        report["phase_seconds"][name] = round(now - phase_t[0], 1)
        phase_t[0] = now
        print(f"  -- {name}: {now - started:.0f} s so far", flush=True)

    VAR.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    report = {"machine": machine(), "rates": {}, "idle": {}, "storm": {}, "profiles": {},
              "perf": {},
              "phase_seconds": {},
              "method": [line.replace("{nginx_logs}", NGINX_LOGS[args.nginx_logs])
                         for line in METHOD]}
    print(f"bench: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
          f"nginx {report['machine']['nginx']}, Python {report['machine']['python']}", flush=True)
    try:
        procs.start("memcached", ["memcached", "-u", "memcache", "-l", MEMCACHED[0], "-p",
                                  str(MEMCACHED[1]), "-U", "0", "-m", "64", "-c", "4096"])
        procs.start("authserver", [PY, str(BENCH / "authserver.py"), "--listen",
                                   f"{AUTH[0]}:{AUTH[1]}"])
        wait_port(*MEMCACHED)
        wait_port(*AUTH)
        nginx, carbotui = Nginx(procs), Carbotui(procs)
        nginx.logs = args.nginx_logs
        nginx.start()
        carbotui.start()
        targets = [nginx, carbotui, nginx, carbotui]
        # warm-up: memcached routes for carbotui, Dovecot's auth caches, nginx's workers
        for kind in ("imap", "pop3"):
            for t in (nginx, carbotui):
                mail_sessions(kind, False, t, 0.5, 4)

        for proto, tls, key in (("imap", False, "imap"), ("imap", True, "imaps"),
                                ("pop3", False, "pop3")):
            if not want(key):
                continue
            runs = {"direct": [stable(lambda: mail_sessions(proto, tls, None, args.seconds,
                                                            args.concurrency))]}
            order = targets
            if key == "imap":           # the floor too: nginx, carbotui, bare, nginx, carbotui, bare
                bare = BareProxy(procs)
                bare.start()
                mail_sessions(proto, tls, bare, 0.5, 4)
                order = [nginx, carbotui, bare, nginx, carbotui, bare]
            for t in order:
                runs.setdefault(t.name, []).append(stable(
                    lambda: mail_sessions(proto, tls, t, args.seconds, args.concurrency)))
            if key == "imap":
                bare.stop()
            report["rates"][key] = {n: summarize(v, "sessions/s") for n, v in runs.items()}
            _print_rates(key, report["rates"][key])
            phase_done(key)

        if want("https"):
            runs = {"direct": [stable(lambda: wrk(
                ["http://127.0.0.1:8080/health", "http://127.0.0.2:8080/health"],
                1, 16, args.seconds, [], [], "direct"))]}
            for t in targets:
                runs.setdefault(t.name, []).append(stable(lambda: wrk(
                    [f"https://127.0.0.1:{t.ports['https']}/health"], 2, 32, args.seconds,
                    t.pids(), t.side_pids(), t.name)))
            report["rates"]["https_small"] = {n: summarize(v, "req/s") for n, v in runs.items()}
            _print_rates("https_small", report["rates"]["https_small"])
            # Diagnostic, not a target: a new TLS connection per request on both proxies,
            # to see what a full handshake per request costs each of them.
            runs = {t.name: [stable(lambda: wrk(
                [f"https://127.0.0.1:{t.ports['https']}/health"], 2, 32, args.seconds,
                t.pids(), t.side_pids(), t.name, headers=("Connection: close",)))]
                for t in (nginx, carbotui)}
            report["rates"]["https_small_close"] = {n: summarize(v, "req/s")
                                                    for n, v in runs.items()}
            _print_rates("https_close", report["rates"]["https_small_close"])
            phase_done("https")

        if want("h2"):
            runs, missing = {}, []
            for t in (nginx, carbotui):
                if not negotiates_h2(t.ports["https"]):
                    missing.append(t.name)
                    continue
                runs[t.name] = [stable(lambda: h2load(
                    f"https://127.0.0.1:{t.ports['https']}/health", args.seconds, 16, 10,
                    t.pids(), t.side_pids(), t.name))]
            report["rates"]["https_h2"] = {n: summarize(v, "req/s") for n, v in runs.items()}
            report["rates"]["https_h2"]["not_available"] = missing
            _print_rates("https_h2", {n: r for n, r in report["rates"]["https_h2"].items()
                                      if n != "not_available"})
            if missing:
                print(f"  https_h2     not available: {', '.join(missing)} does not negotiate "
                      f"h2 by ALPN", flush=True)
            phase_done("h2")

        if want("mb"):
            path = "/download?size=1048576"
            for scheme in ("http", "https"):
                runs = {}
                if scheme == "http":
                    runs["direct"] = [stable(lambda: wrk(
                        [f"http://127.0.0.1:8080{path}", f"http://127.0.0.2:8080{path}"], 1, 2,
                        args.seconds, [], [], "direct"))]
                for t in targets:
                    if scheme == "http" and t is carbotui:
                        continue        # carbotui's port 80 redirects (mail mode), never proxies
                    runs.setdefault(t.name, []).append(stable(lambda: wrk(
                        [f"{scheme}://127.0.0.1:{t.ports[scheme]}{path}"], 1, 4,
                        args.seconds, t.pids(), t.side_pids(), t.name)))
                summary = {n: summarize(v, "MB/s") for n, v in runs.items()}
                for s in summary.values():           # one response = 1 MiB
                    s["rate"] *= 1.048576
                    s["per_run_rate"] = [round(x * 1.048576, 1) for x in s["per_run_rate"]]
                report["rates"][f"{scheme}_1mb"] = summary
                _print_rates(f"{scheme}_1mb", summary)
            phase_done("mb")

        if want("profile"):
            # Not measured runs: py-spy samples one carbotui worker (of 2) under each load.
            worker = carbotui.pids()[0]
            report["profiles"]["https_keepalive"] = pyspy_profile(worker, args.seconds, lambda: wrk(
                [f"https://127.0.0.1:{carbotui.ports['https']}/health"], 2, 32, args.seconds,
                [], [], "carbotui"))
            if negotiates_h2(carbotui.ports["https"]):
                report["profiles"]["https_h2"] = pyspy_profile(worker, args.seconds, lambda: h2load(
                    f"https://127.0.0.1:{carbotui.ports['https']}/health", args.seconds, 16, 10,
                    [], [], "carbotui"))
            report["profiles"]["imaps_login"] = pyspy_profile(
                worker, args.seconds,
                lambda: mail_sessions("imap", True, carbotui, args.seconds, args.concurrency))
            for name, prof in report["profiles"].items():
                _print_profile(name, prof)
            # perf: both proxies' workers, where their CPU goes by shared object
            for t in (nginx, carbotui):
                report["perf"].setdefault("https_keepalive", {})[t.name] = perf_profile(
                    t.worker_pids(), args.seconds, lambda: wrk(
                        [f"https://127.0.0.1:{t.ports['https']}/health"], 2, 32, args.seconds,
                        [], [], t.name))
                report["perf"].setdefault("imaps_login", {})[t.name] = perf_profile(
                    t.worker_pids(), args.seconds,
                    lambda: mail_sessions("imap", True, t, args.seconds, args.concurrency))
            for load, by in report["perf"].items():
                for name, d in by.items():
                    print(f"  perf {load} {name}: " + (d.get("error") or ", ".join(
                        f"{r['object']} {r['pct']}%" for r in d["by_object"][:5])), flush=True)
            phase_done("profile")

        idle_phases = {"idle", "idle_50k", "storm"}
        if any(want(x) for x in idle_phases):
            nginx.stop()
            carbotui.stop()
            for n in range(IDLE_BACKEND_PROCS):
                procs.start(f"idle_backend_{n}", [PY, str(BENCH / "idle_backend.py"),
                                                  *(a for x in IDLE_BACKENDS for a in ("--listen", x))])
            for listen in IDLE_BACKENDS:
                wait_port(*listen.split(":"))
            memcached_flush()          # no route cached for the Dovecots may be used
        if want("idle"):
            for t in (nginx, carbotui):
                phases = report["idle"].setdefault(t.name, {})
                for phase, kind, count in (("idle_imap", "idle_imap", args.idle_count),
                                           ("idle_imaps", "idle_imaps", args.idle_count),
                                           ("idle_10k", "idle_imap", args.big_count)):
                    t.start(idle=True)
                    time.sleep(1.0)
                    try:
                        phases[phase] = idle_hold(
                            t, kind, count, 2 if count <= 4000 else 4,
                            args.hold if phase == "idle_10k" else 1.0,
                            fleet=dashboard_cost if (phase == "idle_10k" and t is carbotui)
                            else None)
                    except RuntimeError as exc:
                        phases[phase] = {"error": str(exc), "requested": count}
                    finally:
                        t.stop()
                    _print_idle(t.name, phase, phases[phase])
            phase_done("idle")

        if want("idle_50k"):
            procs_n = max(4, -(-args.huge_count // 15000))      # < ~19,000 sockets each
            for t in (nginx, carbotui):
                held = drain_time_wait()
                t.start(idle=True, workers=BIG_WORKERS)
                time.sleep(1.5)
                phases = report["idle"].setdefault(t.name, {})
                try:
                    phases["idle_50k"] = idle_hold(
                        t, "idle_imaps", args.huge_count, procs_n, args.hold / 2,
                        fleet=dashboard_cost if t is carbotui else None, open_timeout=400)
                except RuntimeError as exc:
                    phases["idle_50k"] = {"error": str(exc), "requested": args.huge_count}
                finally:
                    t.stop()
                phases["idle_50k"]["time_wait_to_backends_at_start"] = held
                _print_idle(t.name, "idle_50k", phases["idle_50k"])
            phase_done("idle_50k")

        if want("storm"):
            for t in (nginx, carbotui):
                memcached_flush()       # a cold route cache: carbotui asks LDAP for each user
                t.start(idle=True)
                time.sleep(1.0)
                try:
                    report["storm"][t.name] = login_storm(
                        t, args.storm_count, 4, 1.0, 60.0,
                        t.cold_side_pids() if t is carbotui else t.side_pids())
                except RuntimeError as exc:
                    report["storm"][t.name] = {"error": str(exc), "requested": args.storm_count}
                finally:
                    t.stop()
                _print_storm(t.name, report["storm"][t.name])
            phase_done("storm")

    finally:
        procs.stop_all()

    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report["wall_seconds"] = time.time() - started
    report["targets"] = evaluate(report["rates"], report["idle"]) + evaluate_storm(report["storm"])
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print()
    print(md.split("## Rate loads")[0])
    print(f"bench: results in {out.with_suffix('.json')} and {out.with_suffix('.md')}; "
          f"{report['wall_seconds']:.0f} s")
    return 0


def _print_rates(load: str, by_target: dict) -> None:
    for name, r in by_target.items():
        print(f"  {load:12} {name:9} {r['rate']:9.1f} {r['unit']:11} p50 {fmt(r['p50_ms']):>6} ms "
              f"p99 {fmt(r['p99_ms']):>6} ms  CPU {fmt(r['cpu_us']):>6} µs/op  "
              f"errors {r['errors']}  runs {r['per_run_rate']}", flush=True)


def _print_storm(name: str, d: dict) -> None:
    if "error" in d:
        print(f"  login_storm  {name:9} ERROR {d['error']}", flush=True)
        return
    print(f"  login_storm  {name:9} {d['logged_in']}/{d['requested']} logged in, failed "
          f"{d['failed']}, started within {d['started_within_s']:.2f} s, last login at "
          f"{fmt(d['last_login_s'])} s, p50 {fmt(d['p50_ms'])} ms p99 {fmt(d['p99_ms'])} ms, "
          f"peak RSS {d['rss_kb_peak'] / 1024:.0f} MB, CPU {fmt(d['cpu_us_per_login'])} + side "
          f"{fmt(d['side_cpu_us_per_login'])} µs/login {d['first_error']}", flush=True)


def _print_profile(name: str, d: dict) -> None:
    if "error" in d:
        print(f"  profile {name}: {d['error']}", flush=True)
        return
    top = ", ".join(f"{r['function']} {r['own_pct']}%" for r in d["top_own"][:6])
    print(f"  profile {name} ({d['samples']} samples): {top}", flush=True)


def _print_idle(name: str, phase: str, d: dict) -> None:
    if "error" in d:
        print(f"  {phase:12} {name:9} ERROR {d['error']}", flush=True)
        return
    print(f"  {phase:12} {name:9} opened {d['opened']}/{d['requested']} failed {d['failed']} "
          f"alive {d.get('alive')} dropped {d.get('dropped')} RSS/session "
          f"{fmt(d['rss_kb_per_session'])} KB per worker {d.get('sessions_per_worker')} "
          f"open {d['open_seconds']:.1f}s {d['first_error']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
