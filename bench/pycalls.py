"""Interpreted Python calls per session in a carbotui worker.

    flock /tmp/carbotui-callgrind.lock .venv/bin/python bench/pycalls.py \
        [imap|pop3|imaps|pop3s] [--sessions 200]

With the modules compiled (mypyc), a Python frame on a hot path is a call into code that
is not compiled: a standard-library helper, a callback of ours left in Python. callgrind
(bench/instructions*.py) counts instructions but names no Python function; this names
them. The same worker and sessions as bench/instructions.py (bench/quiet_worker.py with
bench/carbotui-bench.toml, its own memcached on the bench's port, 50 sessions to warm
up), without valgrind: `sys.setprofile` is switched on in the worker by one real-time
signal once warm and off by another after N sessions, and each interpreted function
called in between is printed with its count per session, its caller and its place.
C functions called from interpreted code are not counted, nor is anything compiled.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PORTS = {"imap": 12143, "pop3": 12110, "imaps": 12993, "pop3s": 12995}
ON, OFF = signal.SIGRTMIN + 3, signal.SIGRTMIN + 4   # the worker takes SIGUSR1/2 itself


def _in_worker(out: str, program: list[str]) -> None:
    """Runs inside the worker process (`pycalls.py --worker OUT PROGRAM ARGS...`)."""
    import runpy
    counts: collections.Counter = collections.Counter()

    def profile(frame, event, arg):
        if event == "call":
            code, back = frame.f_code, frame.f_back
            counts[(code.co_filename, code.co_firstlineno, code.co_name,
                    back.f_code.co_name if back is not None else "")] += 1

    def on(*_):
        counts.clear()
        sys.setprofile(profile)

    def off(*_):
        sys.setprofile(None)
        with open(out, "w") as f:
            json.dump([[*key, n] for key, n in counts.most_common()], f)

    signal.signal(ON, on)
    signal.signal(OFF, off)
    sys.argv = program
    runpy.run_path(program[0], run_name="__main__")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _in_worker(sys.argv[2], sys.argv[3:])
        return 0
    sys.path.insert(0, str(BENCH))
    from run import MEMCACHED, PY, wait_port
    p = argparse.ArgumentParser()
    p.add_argument("proto", nargs="?", default="imap", choices=sorted(PORTS))
    p.add_argument("--sessions", type=int, default=200)
    args = p.parse_args()
    proto, port = args.proto, PORTS[args.proto]

    def sessions(count: int) -> dict:
        spec = [PY, str(BENCH / "loadgen.py"), "sessions", "--proto", proto.rstrip("s"),
                *(["--tls"] if proto.endswith("s") else []), "--port", str(port),
                "--seconds", "600", "--concurrency", "4", "--max", str(count), "--users", "all"]
        done = subprocess.run(spec, input="go\n", capture_output=True, text=True, timeout=900)
        return [json.loads(line) for line in done.stdout.splitlines()
                if line.startswith("{")][-1]

    with tempfile.TemporaryDirectory(prefix="carbotui-pycalls-") as tmp:
        tmp = Path(tmp)
        config, out = tmp / "bench.toml", tmp / "calls.json"
        config.write_text(f'include = "{BENCH / "carbotui-bench.toml"}"\n'
                          f'[node]\nvar_dir = "{REPO / "var/bench/carbotui"}"\n'
                          '[web]\nhealth_interval = 100000\n')
        memcached = subprocess.Popen(["memcached", "-u", "memcache", "-l", MEMCACHED[0], "-p",
                                      str(MEMCACHED[1]), "-U", "0"])
        worker = subprocess.Popen(
            [PY, __file__, "--worker", str(out), str(BENCH / "quiet_worker.py"), "--config",
             str(config), "--worker", "0"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp / "worker.log", "wb"))
        try:
            wait_port(*MEMCACHED)
            wait_port("127.0.0.1", port, timeout=60)
            sessions(50)
            os.kill(worker.pid, ON)
            result = sessions(args.sessions)
            os.kill(worker.pid, OFF)
            deadline = time.monotonic() + 30
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)            # the worker writes it from its signal handler
            time.sleep(0.2)
            calls = json.loads(out.read_text())
        finally:
            worker.terminate()
            worker.wait(60)
            memcached.terminate()
            memcached.wait(10)
    n = result["n"]
    if result["errors"]:
        print(f"{result['errors']} sessions failed: {result['first_error']}", file=sys.stderr)
        return 1
    calls = [c for c in calls if c[2] != "off"]          # the switch itself
    total = sum(c[4] for c in calls)
    print(f"{proto}: {total / n:.2f} interpreted calls per session ({n} sessions)")
    for filename, line, name, caller, count in calls:
        print(f"  {count / n:8.2f}  {name} <- {caller}  ({filename}:{line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
