"""The mypyc build (setup.py) never runs code older than its source.

carbotui/core/compiled.py: in a checkout, a module's .so wins the import only while no
compiled module's .py is newer than its .so; else (or with CARBOTUI_PURE=1) all of them run
from their .py, with a warning. An installed wheel uses its .so. Tried on a copy of the package whose "compiled" modules are files that
are no library at all: importing one fails exactly when the .so is chosen. And the
checkout holds no .so that setup.py does not build (a leftover would shadow its .py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = next(s for s in __import__("importlib.machinery").machinery.EXTENSION_SUFFIXES
              if s.startswith(".cpython"))


def _mypyc_modules() -> list[str]:
    return re.findall(r'^    "(carbotui/[a-z0-9_/]+\.py)",$', (ROOT / "setup.py").read_text(),
                      re.MULTILINE)


@pytest.fixture
def tree(tmp_path) -> Path:
    shutil.copytree(ROOT / "carbotui", tmp_path / "carbotui",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")     # a checkout
    for name in ("lines", "logformat"):
        so = tmp_path / "carbotui/core" / (name + SUFFIX)
        so.write_bytes(b"not a shared object")
        py = so.with_name(name + ".py")
        os.utime(py, ns=(1, 1))                         # the build is newer than the source
    return tmp_path


def _import(tree: Path, module: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(m.__file__)"], cwd=tree,
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "CARBOTUI_PURE"},
             "PYTHONPATH": str(tree), **env})


def test_a_current_build_is_what_runs(tree):
    p = _import(tree, "carbotui.core.logformat")
    assert p.returncode != 0 and "ImportError" in p.stderr      # the .so was loaded
    assert "changed since it was compiled" not in p.stderr


def test_an_edited_source_runs_as_python_and_so_do_the_other_compiled_modules(tree):
    (tree / "carbotui/core/lines.py").touch()                  # edited after the build
    for module in ("carbotui.core.lines", "carbotui.core.logformat"):
        p = _import(tree, module)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == str(tree / (module.replace(".", "/") + ".py"))
        assert "carbotui.core.lines changed since it was compiled" in p.stderr
        assert "carbotui.core.logformat changed" not in p.stderr


def test_an_installed_wheel_uses_its_compiled_modules_whatever_their_times(tree):
    # pip writes a wheel's files in any order: a .py may be newer than its .so
    (tree / "setup.py").unlink()
    (tree / "carbotui/core/lines.py").touch()
    p = _import(tree, "carbotui.core.logformat")
    assert p.returncode != 0 and "ImportError" in p.stderr      # the .so was loaded
    p = _import(tree, "carbotui.core.logformat", CARBOTUI_PURE="1")
    assert p.returncode == 0 and p.stdout.strip().endswith("carbotui/core/logformat.py")


def test_carbotui_pure_runs_every_compiled_module_as_python(tree):
    p = _import(tree, "carbotui.core.logformat", CARBOTUI_PURE="1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("carbotui/core/logformat.py") and p.stderr == ""


def test_the_checkout_holds_only_the_extensions_setup_py_builds():
    listed = {m[:-3] + SUFFIX for m in _mypyc_modules()}
    assert len(listed) >= 10 and all((ROOT / m).exists() for m in _mypyc_modules())
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "carbotui").rglob("*.so")}
    assert found <= listed, f"not built by setup.py, shadowing their .py: {found - listed}"


SLICER = '''
def cut(b: bytes, i: int, j: int) -> bytes:
    return b[i:j]

def cut_array(b: bytearray, i: int, j: int) -> bytearray:
    return b[i:j]

def inner(b: bytes) -> bytes:
    return b[1:-1]
'''

BUILD = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("carbotui_setup", sys.argv[1])
setup_py = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup_py)          # its setup() runs only as __main__
from mypyc.build import mypycify
from setuptools import setup
extensions = mypycify(["slicer.py"])
assert setup_py.mend_bytes_slice("build") == 1
setup(name="slicer", ext_modules=extensions, script_args=["-q", "build_ext", "--inplace"])
'''

CHECK = '''
import json, slicer
cases = [(b"abc", i, j) for i in range(-5, 6) for j in range(-5, 6)] + [(b"a", 1, -1), (b"", 0, 0)]
out = []
for b, i, j in cases:
    got = [slicer.cut(b, i, j), slicer.cut_array(bytearray(b), i, j)]
    out.append([got[0] == b[i:j], bytes(got[1]) == b[i:j], type(got[1]).__name__])
out.append([slicer.inner(b"a") == b"", slicer.inner(b"abc") == b"b", "bytes"])
print(json.dumps(out))
'''


def test_compiled_bytes_slices_with_the_end_before_the_start_are_empty(tmp_path):
    """setup.py's mend_bytes_slice: mypyc 2.4 raises SystemError for b[2:1] (and b[1:-1] of
    one byte) in compiled code; a parser fed hostile input slices at such offsets. A module
    built the way setup.py builds carbotui's gives what Python gives, for every pair of
    bounds around a short value, bytes and bytearray alike."""

    (tmp_path / "slicer.py").write_text(SLICER)
    build = subprocess.run([sys.executable, "-c", BUILD, str(ROOT / "setup.py")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    check = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr[-2000:]
    import json
    results = json.loads(check.stdout)
    assert len(results) == 11 * 11 + 3
    assert all(ok_bytes and ok_array and kind == "bytearray" for ok_bytes, ok_array, kind
               in results[:-1]), results
    assert results[-1][:2] == [True, True]
