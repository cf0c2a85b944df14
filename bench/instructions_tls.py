"""Instructions per IMAPS or POP3S session in a carbotui worker, counted by callgrind.

    flock /tmp/carbotui-callgrind.lock .venv/bin/python bench/instructions_tls.py \
        [imaps|pop3s] [--sessions 200] [--tree DIR] [--keep DIR]

bench/instructions.py for the implicit-TLS listeners: the same worker (bench/quiet_worker.py
under valgrind with bench/carbotui-bench.toml, its own memcached on the bench's port, 50
sessions to warm the route cache, then N counted), the same sessions (bench/loadgen.py:
connect, greeting, LOGIN, SELECT INBOX, LOGOUT; POP3: USER, PASS, STAT, QUIT) over TLS
(TLS 1.3, ECDHE, the demo's ECDSA P-256 certificate). The count includes OpenSSL's
handshake, the same for every proxy glue. --tree DIR counts the carbotui package found in
DIR instead (e.g. `git archive <commit> carbotui | tar -x -C DIR`), to compare commits; a
checkout built with `make compiled` runs compiled (its mypyc library is linked in too).
Needs the lock: it uses the bench's fixed ports, as instructions.py does.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from instructions import counted  # noqa: E402
from run import PY  # noqa: E402

PORTS = {"imaps": 12993, "pop3s": 12995}


def sessions(proto: str, count: int) -> dict:
    spec = [PY, str(BENCH / "loadgen.py"), "sessions", "--proto", proto.rstrip("s"), "--tls",
            "--port", str(PORTS[proto]), "--seconds", "900", "--concurrency", "4", "--max",
            str(count), "--users", "all"]
    out = subprocess.run(spec, input="go\n", capture_output=True, text=True, timeout=1200)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][-1]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("proto", nargs="?", default="imaps", choices=sorted(PORTS))
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--tree", type=Path, help="count the carbotui package in this directory")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="copy the counted callgrind dump into DIR (for callgrind_annotate)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="carbotui-tree-") as tmp:
        worker_py = BENCH / "quiet_worker.py"
        if args.tree:
            # quiet_worker.py puts its own checkout first on sys.path
            tmp = Path(tmp)
            (tmp / "tree/bench").mkdir(parents=True)
            (tmp / "tree/carbotui").symlink_to(args.tree.resolve() / "carbotui")
            # a compiled tree: mypyc's shared library sits beside the package, not in it
            for lib in args.tree.resolve().glob("*__mypyc.*.so"):
                (tmp / "tree" / lib.name).symlink_to(lib)
            worker_py = tmp / "tree/bench/quiet_worker.py"
            shutil.copyfile(BENCH / "quiet_worker.py", worker_py)
        keep = args.keep / f"callgrind.out.{args.proto}" if args.keep else None
        total, result = counted([worker_py, "--config", None, "--worker", "0"],
                                PORTS[args.proto],
                                lambda: sessions(args.proto, 50),  # routes cached, code warm
                                lambda: sessions(args.proto, args.sessions), keep, cwd=REPO)
    if result["errors"]:
        print(f"{result['errors']} sessions failed: {result['first_error']}", file=sys.stderr)
        return 1
    print(f"{args.proto}{' (' + str(args.tree) + ')' if args.tree else ''}: "
          f"{total / result['n']:,.0f} instructions per session ({result['n']} sessions, "
          f"user space, callgrind)")
    if keep is not None:
        print(f"kept {keep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
