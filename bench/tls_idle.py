"""Where the memory of an idle TLS connection goes: a bare uvloop server holding N of them.

    .venv/bin/python bench/tls_idle.py [--mode uvloop|bio|plain|all] [--count 2000]
                                       [--port 14990] [--tracemalloc] [--smaps] [--trim]
                                       [--burst KB]

One server process (this file, `serve`) accepts on 127.0.0.1:PORT and greets each
connection with one line after the handshake, as an IMAPS server does; one client process
(`client`) opens N connections, reads each greeting, keeps them open. Measured in the
server: RSS (/proc/PID/statm) before and after, per connection; --smaps splits the growth
by mapping (heap, anonymous mmaps, ...); --tracemalloc gives what Python objects hold (top
allocation sites); --trim calls malloc_trim(0) before each measure (what is free but kept
by glibc). Modes:

    uvloop   loop.create_server(ssl=ctx): uvloop's SSLProtocol (as carbotui's web listeners)
    bio      carbotui/proxy/tlsbio.TlsServer over a plain uvloop TCP transport
    plain    no TLS at all (the TCP transport and the greeter alone)

The context is carbotui's (carbotui/proxy/tls.py with carbotui.toml: ECDSA P-256
certificate, no tickets). Own ports 14990 and up; nothing else is started.

    .venv/bin/python bench/tls_idle.py proxy [--count 2000] [--workers 2] [--clients 2]
                                             [--kind idle_imaps] [--tree DIR]

    .venv/bin/python bench/tls_idle.py openssl [--count 2000]

what OpenSSL's server object costs by itself (in one process, no sockets), created only
and after a handshake.

`proxy` measures carbotui itself as `make bench`'s idle phase does (bench/run.py
idle_hold: LOGIN, SELECT, IDLE through the proxy, RSS of the workers before and after,
per session), on
ports of its own: its own memcached (127.0.0.1:14212), bench/idle_backend.py on
127.0.0.41/.42:7143 (the [hosts] table points mbox1/mbox2 there), carbotui workers with
bench/carbotui-idle.toml's settings on 127.0.0.1:14143 (IMAP) and 14993 (IMAPS).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = str(REPO / ".venv/bin/python")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def server_context() -> ssl.SSLContext:
    from carbotui.core import settings as config_mod
    from carbotui.proxy.tls import TlsContexts
    return TlsContexts(config_mod.load(REPO / "carbotui.toml")).front


def rss_kb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_KB


def smaps() -> dict[str, int]:
    """Rss (KB) by mapping kind: [heap], [anon] (anonymous mmaps), file name, ..."""
    out: dict[str, int] = {}
    name = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if not parts[0].endswith(":"):
            name = parts[5] if len(parts) > 5 else "[anon]"
            if name.startswith("/"):
                name = "libs+files"
        elif parts[0] == "Rss:":
            out[name] = out.get(name, 0) + int(parts[1])
    out["[mappings]"] = sum(1 for line in Path("/proc/self/maps").read_text().splitlines())
    return out


class Greeter(asyncio.Protocol):
    count = 0
    burst = b""             # --burst: sent before the greeting (a download, then idle)

    def connection_made(self, transport):
        self.transport = transport
        Greeter.count += 1
        for start in range(0, len(self.burst), 65536):     # in relay-sized chunks
            transport.write(self.burst[start:start + 65536])
        transport.write(b"* OK ready\r\n")

    def data_received(self, data):
        self.transport.write(b"* BAD\r\n")

    def connection_lost(self, exc):
        Greeter.count -= 1


async def serve(args) -> None:
    import tracemalloc
    loop = asyncio.get_running_loop()
    Greeter.burst = b"x" * (args.burst * 1024)
    ctx = server_context() if args.mode != "plain" else None
    if args.mode == "bio":
        from carbotui.proxy.tlsbio import server_factory
        server = await loop.create_server(server_factory(Greeter, ctx), "127.0.0.1", args.port,
                                          backlog=4096)
    else:
        server = await loop.create_server(Greeter, "127.0.0.1", args.port, ssl=ctx,
                                          ssl_handshake_timeout=10 if ctx else None,
                                          backlog=4096)
    libc = ctypes.CDLL("libc.so.6")
    if args.tracemalloc:
        tracemalloc.start(1)
    snapshot = None
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if args.trim:
            libc.malloc_trim(0)
        stats = {"rss_kb": rss_kb(), "connections": Greeter.count}
        if args.smaps:
            stats["smaps"] = smaps()
        if args.tracemalloc:
            stats["traced_kb"] = tracemalloc.get_traced_memory()[0] / 1024
            if line == "base":
                snapshot = tracemalloc.take_snapshot()
            elif snapshot is not None:
                diff = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
                stats["top"] = [f"{d.size_diff / max(1, Greeter.count):.0f} B/conn "
                                f"{d.count_diff} blocks {d.traceback[0].filename.rsplit('/', 2)[-1]}"
                                f":{d.traceback[0].lineno}" for d in diff[:8]]
        print(json.dumps(stats), flush=True)
    server.close()


async def client(args) -> None:
    ctx = None
    if args.mode != "plain":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    held = []
    limit = 2 * 1024 * (args.burst + 64)
    sem = asyncio.Semaphore(48)

    async def one():
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", args.port, ssl=ctx, limit=limit), 30)
            await asyncio.wait_for(r.readuntil(b"* OK ready\r\n"), 30)
            held.append(w)

    while word := (await reader.readline()).decode().strip():
        if word.startswith("open"):
            n = int(word.split()[1])
            results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            print(json.dumps({"opened": n - len(errors), "first_error": repr(errors[0])
                              if errors else ""}), flush=True)
        elif word == "close":
            for w in held:
                w.close()
            held.clear()
            print(json.dumps({"closed": True}), flush=True)


def ask(proc, word: str, timeout: float = 300) -> dict:
    proc.stdin.write(word + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{word}: no answer")
    return json.loads(line)


def measure(args, mode: str) -> dict:
    common = ["--mode", mode, "--port", str(args.port), "--burst", str(args.burst)]
    flags = [f for f, on in (("--tracemalloc", args.tracemalloc), ("--smaps", args.smaps),
                             ("--trim", args.trim)) if on]
    server = subprocess.Popen([PY, __file__, "serve", *common, *flags], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    cli = subprocess.Popen([PY, __file__, "client", *common], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        ask(cli, "open 50")                  # warm: code paths, allocator arenas
        ask(cli, "close")
        deadline = time.monotonic() + 10
        while ask(server, "stats")["connections"] and time.monotonic() < deadline:
            time.sleep(0.1)
        base = ask(server, "base")
        opened = ask(cli, f"open {args.count}")
        time.sleep(1.0)
        after = ask(server, "after")
        n = after["connections"]
        out = {"mode": mode, "opened": opened["opened"], "held": n,
               "first_error": opened["first_error"],
               "rss_kb_per_conn": round((after["rss_kb"] - base["rss_kb"]) / n, 2) if n else None}
        if args.smaps:
            out["smaps_kb_per_conn"] = {k: round((v - base["smaps"].get(k, 0)) / n, 2)
                                        for k, v in after["smaps"].items()
                                        if v != base["smaps"].get(k, 0) and k != "[mappings]"}
            out["mappings_per_conn"] = round(
                (after["smaps"]["[mappings]"] - base["smaps"]["[mappings]"]) / n, 3)
        if args.tracemalloc:
            out["python_kb_per_conn"] = round((after["traced_kb"] - base["traced_kb"]) / n, 2)
            out["top"] = after.get("top")
        ask(cli, "close")
        return out
    finally:
        for p in (cli, server):
            try:
                p.stdin.close()
                p.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()


PROXY_PORTS = {"idle_imap": 14143, "idle_imaps": 14993, "imap": 14143, "imaps": 14993,
               "pop3": 14110, "pop3s": 14995, "https": 14443}
PROXY_CONFIG = """include = "{repo}/bench/carbotui-bench.toml"
[node]
var_dir = "{repo}/var/bench/tls-idle"
[listen]
imap = ["127.0.0.1:14143"]
imaps = ["127.0.0.1:14993"]
pop3 = ["127.0.0.1:14110"]
pop3s = ["127.0.0.1:14995"]
http = ["127.0.0.1:14080"]
https = ["127.0.0.1:14443"]
admin = ["127.0.0.1:14071"]
[memcached]
servers = ["127.0.0.1:14212"]
[hosts]
"mbox1.demo.test" = "127.0.0.41"
"mbox2.demo.test" = "127.0.0.42"
"""


def proxy(args) -> int:
    sys.path.insert(0, str(REPO / "bench"))
    import run as bench
    procs = bench.Procs()
    config = REPO / "var/bench/tls-idle.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(PROXY_CONFIG.format(repo=REPO))

    class Target:
        name = "carbotui"
        ports = PROXY_PORTS

        def pids(self):
            return [p.pid for n, p in procs.running.items() if n.startswith("tlsidle_w")]
        worker_pids = pids
    try:
        procs.start("tlsidle_memcached", ["memcached", "-u", "memcache", "-l", "127.0.0.1",
                                          "-p", "14212", "-U", "0"])
        for n in range(2):
            procs.start(f"tlsidle_backend_{n}", [PY, str(REPO / "bench/idle_backend.py"),
                                                 "--listen", "127.0.0.41:7143",
                                                 "--listen", "127.0.0.42:7143"])
        bench.wait_port("127.0.0.1", 14212)
        bench.wait_port("127.0.0.41", 7143)
        for n in range(args.workers):
            # --tree: another checkout's carbotui (e.g. `git archive` of a commit), to
            # compare; the config and certificates stay this tree's.
            log = open(bench.LOGS / f"tlsidle_w{n}.log", "ab")
            procs.running[f"tlsidle_w{n}"] = subprocess.Popen(
                [PY, "-m", "carbotui.proxy", "--config", str(config), "--worker", str(n)],
                cwd=args.tree or REPO, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        bench.wait_port("127.0.0.1", 14993, timeout=30)
        time.sleep(1.5)                 # every worker bound, its LDAP snapshot applied
        for _ in range(args.runs):
            out = bench.idle_hold(Target(), args.kind, args.count, args.clients, 1.0,
                                  open_timeout=600)
            print(json.dumps({k: out.get(k) for k in (
                "kind", "opened", "failed", "alive", "dropped", "rss_kb_per_session",
                "sessions_per_worker", "rss_growth_mb_per_worker", "first_error")}), flush=True)
    finally:
        procs.stop_all()
    return 0


def openssl(args) -> int:
    """In one process, no sockets: what OpenSSL's server object (with its two MemoryBIOs and
    the Python objects) costs, created only and after a whole TLS 1.3 handshake (the
    client side freed). malloc_trim(0) before each measure."""
    import gc
    libc = ctypes.CDLL("libc.so.6")
    sctx = server_context()
    cctx = ssl.create_default_context()
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE

    def created():
        si, so = ssl.MemoryBIO(), ssl.MemoryBIO()
        return sctx.wrap_bio(si, so, server_side=True), si, so

    def handshaken():
        s, si, so = created()
        ci, co = ssl.MemoryBIO(), ssl.MemoryBIO()
        c = cctx.wrap_bio(ci, co, server_hostname="imap.demo.test")
        for _ in range(4):
            for end in (c, s):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            si.write(co.read())
            ci.write(so.read())
        s.write(b"* OK ready\r\n")
        ci.write(so.read())
        assert c.read(100) == b"* OK ready\r\n"
        return s, si, so

    for name, make in (("SSLObject created", created), ("after a handshake", handshaken)):
        keep = [make() for _ in range(50)]
        del keep
        gc.collect()
        libc.malloc_trim(0)
        before = rss_kb()
        keep = [make() for _ in range(args.count)]
        gc.collect()
        libc.malloc_trim(0)
        print(json.dumps({"openssl": name, "rss_kb_per_object": round(
            (rss_kb() - before) / args.count, 2)}), flush=True)
        del keep
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role", nargs="?", default="run",
                   choices=("run", "serve", "client", "proxy", "openssl"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tree", type=Path, help="proxy: run the carbotui package found here")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--clients", type=int, default=2, help="proxy: client processes")
    p.add_argument("--kind", default="idle_imaps", choices=("idle_imaps", "idle_imap"))
    p.add_argument("--mode", default="all", choices=("uvloop", "bio", "plain", "all"))
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--port", type=int, default=14990)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--smaps", action="store_true")
    p.add_argument("--trim", action="store_true")
    p.add_argument("--burst", type=int, default=0, metavar="KB",
                   help="the server first sends KB kilobytes (in 64 KiB writes), then greets")
    args = p.parse_args()
    if args.role == "proxy":
        return proxy(args)
    if args.role == "openssl":
        return openssl(args)
    if args.role != "run":
        import uvloop
        uvloop.install()
        asyncio.run(serve(args) if args.role == "serve" else client(args))
        return 0
    modes = ("plain", "uvloop", "bio") if args.mode == "all" else (args.mode,)
    for mode in modes:
        print(json.dumps(measure(args, mode)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
