"""The dashboard's refresh cost with many live sessions, on a node of its own.

    .venv/bin/python bench/dashboard_load.py --sessions 10000 [--workers 2] [--code DIR]

Starts, and stops at the end whatever happens: memcached 127.0.0.1:18212, bench/idle_backend.py
on 127.0.0.71/.72:7143, `--workers` carbotui workers on bench/dashboard-load.toml (ports
18xxx), and bench/loadgen.py idle clients (LOGIN, SELECT, IDLE) holding `--sessions`
sessions. Then it times `--refreshes` calls of Fleet.collect() (the dashboard's refresh),
0.5 s apart: this process's CPU (time.process_time), median and max after the first; and
the workers' CPU per refresh (utime+stime from /proc, in 10 ms ticks): over
`--back-to-back` refreshes in a row, less their CPU holding the sessions over as long
without any. Prints one JSON line. `--code DIR` runs the workers and the
Fleet from another copy of carbotui (e.g. `git archive HEAD carbotui | tar -x -C DIR`), to
compare before and after on the same load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PY = str(REPO / ".venv/bin/python")
CONFIG = BENCH / "dashboard-load.toml"
MEMCACHED = ("127.0.0.1", 18212)
BACKENDS = ("127.0.0.71:7143", "127.0.0.72:7143")
IMAP_PORT = 18143
LOG = REPO / "var/dashload/log"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=0, help="client processes (default: 1 per 5,000)")
    p.add_argument("--code", default=str(REPO), help="the carbotui copy to run")
    p.add_argument("--refreshes", type=int, default=13, help="timed one by one, 0.5 s apart")
    p.add_argument("--back-to-back", type=int, default=20,
                   help="refreshes run back to back for the workers' CPU")
    args = p.parse_args()
    code = Path(args.code).resolve()
    sys.path.insert(0, str(BENCH))
    import run as bench                     # bench/run.py's helpers (cpu_seconds, clients ...)
    sys.path.insert(0, str(code))           # after: run.py puts this checkout first
    env = dict(os.environ, PYTHONPATH=str(code))
    LOG.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []

    def start(name, argv, **kw):
        log = open(LOG / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        started.append(proc)
        return proc

    cprocs: list[subprocess.Popen] = []
    try:
        start("memcached", ["memcached", "-u", "memcache", "-l", MEMCACHED[0], "-p",
                            str(MEMCACHED[1]), "-U", "0", "-m", "64", "-c", "4096"])
        backends = max(1, -(-args.sessions // 12000))
        for n in range(backends):
            start(f"idle_backend_{n}", [PY, str(BENCH / "idle_backend.py"),
                                        *(a for b in BACKENDS for a in ("--listen", b))])
        bench.wait_port(*MEMCACHED)
        for b in BACKENDS:
            host, port = b.split(":")
            bench.wait_port(host, int(port))
        workers = [start(f"worker_{n:02d}", [PY, "-m", "carbotui.proxy", "--config", str(CONFIG),
                                             "--worker", str(n)], cwd=code, env=env)
                   for n in range(args.workers)]
        bench.wait_port("127.0.0.1", IMAP_PORT, 30)
        time.sleep(1.0)
        pids = [w.pid for w in workers]
        n_clients = args.clients or max(1, -(-args.sessions // 5000))
        per = args.sessions // n_clients
        specs = [["idle", "--port", str(IMAP_PORT), "--count", str(per), "--offset", str(i),
                  "--open-concurrency", "48", "--source", f"127.77.{i}.1"]
                 for i in range(n_clients)]
        cprocs = bench.clients(specs)
        t0 = time.perf_counter()
        bench.tell(cprocs, "go")
        opened = [json.loads(bench.read_line(c, 600)) for c in cprocs]
        out = {"code": str(code), "workers": args.workers, "requested": per * n_clients,
               "opened": sum(o["opened"] for o in opened),
               "failed": sum(o["failed"] for o in opened),
               "open_seconds": round(time.perf_counter() - t0, 1)}
        time.sleep(2.0)
        from carbotui.admin.node import Fleet
        from carbotui.core import settings as config
        fleet = Fleet(config.load(str(CONFIG)))
        mine, seen = [], 0
        for _ in range(args.refreshes):          # as the dashboard: one refresh a while
            c0 = time.process_time()
            snap = fleet.collect()
            mine.append((time.process_time() - c0) * 1000)
            seen = snap.totals.sessions
            time.sleep(0.5)
        # The workers' CPU per refresh: /proc counts in 10 ms ticks, so over a run of
        # back-to-back refreshes, less what the workers spend holding the sessions alone
        # over as long a time.
        w0, t0 = bench.cpu_seconds(pids), time.perf_counter()
        time.sleep(3.0)
        idle_rate = (bench.cpu_seconds(pids) - w0) / (time.perf_counter() - t0)
        w0, t0 = bench.cpu_seconds(pids), time.perf_counter()
        for _ in range(args.back_to_back):
            fleet.collect()
        wall = time.perf_counter() - t0
        busy = bench.cpu_seconds(pids) - w0
        fleet.close()
        # One worker's CPU per stats request, by what is asked: 50 requests in a row.
        from carbotui.backends import worker_sockets as wire
        probe = {}
        path = wire.stats_path(fleet.settings.run_dir, "proxy_00")
        asks = [("everything", None)]
        if hasattr(wire, "SessionQuery"):        # not a copy from before the queries
            asks += [("counts_only", wire.SessionQuery(limit=0)), ("page", wire.SessionQuery()),
                     ("page_filtered", wire.SessionQuery(terms=((None, "user03"),)))]
        for label, query in asks:
            c0 = bench.cpu_seconds(pids[:1])
            for _ in range(50):
                if query is None:
                    wire.read_stats_json(path, 10.0)
                else:
                    wire.read_stats_json(path, 10.0, query)
            probe[label] = round((bench.cpu_seconds(pids[:1]) - c0) / 50 * 1000, 2)
        out["worker_00_cpu_ms_per_request"] = probe
        out.update({"sessions_seen": seen, "rows_sent": len(snap.sessions),
                    "collect_cpu_ms_median": round(statistics.median(mine[1:]), 1),
                    "collect_cpu_ms_max": round(max(mine[1:]), 1),
                    "collect_cpu_ms_all": [round(x, 1) for x in mine],
                    "worker_cpu_ms_per_refresh": round(
                        (busy - idle_rate * wall) / args.back_to_back * 1000, 1),
                    "worker_idle_cpu_ms_per_s": round(idle_rate * 1000, 1),
                    "back_to_back": args.back_to_back})
        print(json.dumps(out), flush=True)
        bench.tell(cprocs, "close")
        for c in cprocs:
            try:
                bench.read_line(c, 90)
            except RuntimeError:
                pass
    finally:
        for c in cprocs:
            try:
                c.stdin.close()
                c.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                c.kill()
        for proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
