"""Instructions per mail session in a carbotui worker, counted by callgrind.

    .venv/bin/python bench/instructions.py [imap|pop3] [--sessions 200] [--bare] [--keep DIR]

Wall-clock CPU on a shared 2-core machine moves ±10 % between runs; callgrind's count of
user-space instructions does not (two runs agree to 0.5 %), so this is the measure for
changes to the login path too small for `make bench` to see. The kernel's work (TCP,
epoll) is not counted. Needs the demo stack (`make up`) and valgrind; starts its own
memcached on the bench's port and one worker (bench/quiet_worker.py) under valgrind with
bench/carbotui-bench.toml, warms the route cache with 50 sessions, then counts N.
--bare counts bench/bare_proxy.py instead (IMAP only): the floor for an asyncio proxy.
--keep DIR copies the counted dump there (DIR/callgrind.out.<proto>) for
`callgrind_annotate --inclusive=yes DIR/callgrind.out.imap`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import MEMCACHED, PY, wait_port  # noqa: E402

PORTS = {"imap": 12143, "pop3": 12110}


def sessions(proto: str, count: int) -> dict:
    spec = [PY, str(BENCH / "loadgen.py"), "sessions", "--proto", proto, "--port",
            str(PORTS[proto]), "--seconds", "600", "--concurrency", "4", "--max", str(count),
            "--users", "all"]
    out = subprocess.run(spec, input="go\n", capture_output=True, text=True, timeout=900)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][-1]


def counted(program: list, port: int, warm, measure, keep: Path | None = None,
            cwd: Path | None = None) -> tuple[int, object]:
    """The bench's memcached and ``program`` (a Python program and its arguments, None
    standing for the bench config) under callgrind; once ``port`` answers, ``warm()``,
    the counters zeroed, ``result = measure()``, the counters dumped. -> (user-space
    instructions counted, result); ``keep``: where to copy the counted dump.
    Shared by instructions_tls.py and instructions_https.py."""
    with tempfile.TemporaryDirectory(prefix="carbotui-callgrind-") as tmp:
        tmp = Path(tmp)
        config = tmp / "bench.toml"
        config.write_text(f'include = "{BENCH / "carbotui-bench.toml"}"\n'
                          f'[node]\nvar_dir = "{REPO / "var/bench/carbotui"}"\n'
                          '[web]\nhealth_interval = 100000\n')
        memcached = subprocess.Popen(["memcached", "-u", "memcache", "-l", MEMCACHED[0], "-p",
                                      str(MEMCACHED[1]), "-U", "0"])
        out = tmp / "callgrind.out"
        program = [str(config) if arg is None else str(arg) for arg in program]
        worker = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PY, *program],
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(tmp / "worker.log", "wb"))
        try:
            wait_port(*MEMCACHED)
            wait_port("127.0.0.1", port, timeout=120)
            warm()
            subprocess.run(["callgrind_control", "-z", str(worker.pid)], check=True,
                           capture_output=True)
            result = measure()
            subprocess.run(["callgrind_control", "-d", str(worker.pid)], check=True,
                           capture_output=True)
            time.sleep(0.5)                  # callgrind writes the dump after it answers
            dumps = sorted(tmp.glob("callgrind.out.*"))
            total = next(int(line.split()[1]) for line in dumps[-1].read_text().splitlines()
                         if line.startswith(("summary:", "totals:")))
            if keep is not None:
                keep.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dumps[-1], keep)
        finally:
            worker.terminate()
            worker.wait(60)
            memcached.terminate()
            memcached.wait(10)
    return total, result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("proto", nargs="?", default="imap", choices=sorted(PORTS))
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--bare", action="store_true", help="count bench/bare_proxy.py (IMAP)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="copy the counted callgrind dump into DIR (for callgrind_annotate)")
    args = p.parse_args()
    if args.bare and args.proto != "imap":
        p.error("--bare speaks IMAP only")
    program = [BENCH / "bare_proxy.py"] if args.bare else [
        BENCH / "quiet_worker.py", "--config", None, "--worker", "0"]
    what = "bare_proxy" if args.bare else args.proto
    keep = args.keep / f"callgrind.out.{'bare' if args.bare else args.proto}" if args.keep \
        else None
    total, result = counted(program, PORTS[args.proto],
                            lambda: sessions(args.proto, 50),      # routes cached, code warm
                            lambda: sessions(args.proto, args.sessions), keep)
    if result["errors"]:
        print(f"{result['errors']} sessions failed: {result['first_error']}", file=sys.stderr)
        return 1
    print(f"{what}: {total / result['n']:,.0f} instructions per session "
          f"({result['n']} sessions, user space, callgrind)")
    if keep is not None:
        print(f"kept {keep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
