"""Exit 0 when the in-place mypyc build is newer than everything it is built from.

    python scripts/compiled_fresh.py MODULE.py... -- OTHER_DEPENDENCY...

`make compiled` asks this before compiling: `pip install -e` (make venv) builds the
compiled modules in place itself, so right after it the build is current and a second
compile (about 2 minutes) would only repeat it. Fresh means: every MODULE.py has its .so
beside it, the shared library (setup.py's GROUP) is at the checkout's root, and the oldest
of those files is newer than every MODULE.py and OTHER_DEPENDENCY.
"""
from __future__ import annotations

import glob
import importlib.machinery
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]      # .cpython-311-x86_64-linux-gnu.so
GROUP = "carbotui_compiled__mypyc"                       # setup.py's GROUP + "__mypyc"


def fresh(modules: list[str], others: list[str]) -> bool:
    built = [os.path.join(ROOT, m[:-len(".py")] + SUFFIX) for m in modules]
    built += glob.glob(os.path.join(ROOT, GROUP + ".*.so"))[:1] or [os.path.join(ROOT, GROUP + SUFFIX)]
    try:
        oldest = min(os.stat(p).st_mtime_ns for p in built)
        newest = max(os.stat(os.path.join(ROOT, p)).st_mtime_ns for p in modules + others)
    except FileNotFoundError:
        return False
    return oldest > newest


if __name__ == "__main__":
    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else len(args)
    sys.exit(0 if args[:cut] and fresh(args[:cut], args[cut + 1:]) else 1)
