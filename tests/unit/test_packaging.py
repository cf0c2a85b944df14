"""The wheel is the product, and only the product.

The wheel is built from a copy of the checkout (pyproject.toml as it is, this venv's
setuptools: `pip wheel --no-deps --no-build-isolation`; a copy, because setuptools packs
whatever an earlier build left in ./build/lib). Then:

- it holds carbotui/ and workers/, every module of them, and nothing from demo/ (the stack
  generator, the demo mailbox web app, the SMTP sink, the dashboard's fake source) or any
  other demo or fake module;
- a static scan of every import statement in it (lazy ones in functions included) finds only
  the standard library, the wheel's own packages and the dependencies its METADATA declares
  (no aiosmtpd, hypothesis or pytest: those are the [test] extra);
- every module in it imports, from the unpacked wheel, in an interpreter where every installed
  distribution outside the declared dependencies (and what they require) cannot be imported.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("carbotui",)
# the checkout's folders that are no source: runtime state, caches, git
NOT_SOURCE = {".git", ".venv", "var", "build", "dist", ".pytest_cache", "__pycache__"}
TEST_ONLY = {"aiosmtpd", "hypothesis", "pytest", "_pytest", "syrupy", "pytest_textual_snapshot",
             "pytest_timeout"}


def _name(requirement: str) -> str:
    """'rich (>=14.2.0)' or 'pytest>=8; extra == "test"' -> 'rich' / 'pytest', normalised."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement)[1]).lower()


def _runtime(requirement: str) -> bool:
    """False for a requirement that only an extra brings in."""
    return "extra" not in requirement.partition(";")[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout, unpacked; the path of the unpacked tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    # the product's content, so pure Python (CARBOTUI_PURE=1): no mypyc build of setup.py's
    # modules, nor their in-place builds (*.so) copied from the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", "*.so")
    for entry in ROOT.iterdir():
        if (entry.name in NOT_SOURCE or entry.name.endswith((".egg-info", ".so"))
                or entry.name.startswith(".venv")):
            continue
        if entry.is_dir():
            shutil.copytree(entry, src / entry.name, ignore=ignore, symlinks=True)
        elif entry.is_file():
            shutil.copy2(entry, src / entry.name)
    out = tmp / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CARBOTUI_PURE": "1"})
    if "invalid command 'bdist_wheel'" in p.stdout + p.stderr:
        pytest.fail(f"this venv's setuptools {md.version('setuptools')} cannot build a wheel "
                    "(needs >= 70.1, the [test] extra): run `make venv`")
    assert p.returncode == 0, p.stdout + p.stderr
    (built,) = out.glob("carbotui-*.whl")
    tree = tmp / "tree"
    with zipfile.ZipFile(built) as z:
        z.extractall(tree)
    return tree


def _files(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())


def _modules(tree: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py in the wheel."""
    mods = {}
    for p in sorted(tree.rglob("*.py")):
        parts = list(p.relative_to(tree).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    return mods


def _metadata(tree: Path):
    (meta,) = tree.glob("*.dist-info/METADATA")
    return md.PathDistribution(meta.parent)


def _declared(tree: Path) -> set[str]:
    return {_name(r) for r in _metadata(tree).requires or () if _runtime(r)}


def _import_names(dists: set[str]) -> set[str]:
    """The top-level import names the installed distributions `dists` provide."""
    names = set()
    for top, providers in md.packages_distributions().items():
        if any(_name(d) in dists for d in providers):
            names.add(top)
    return names


def _closure(dists: set[str]) -> set[str]:
    """`dists` and everything they require at run time, as far as it is installed."""
    seen, todo = set(), list(dists)
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            todo += [_name(r) for r in md.requires(d) or () if _runtime(r)]
        except md.PackageNotFoundError:
            pass
    return seen


def test_wheel_holds_the_product_and_no_demo_or_fake_code(wheel):
    files = [f for f in _files(wheel) if ".dist-info/" not in f]
    assert {f.split("/")[0] for f in files} == set(PRODUCT)
    demo_like = [f for f in files if re.search(r"(^|/)[^/]*(demo|fake|mailsink)[^/]*(/|$)", f)]
    assert demo_like == []
    for gone in ("carbotui/demo.py", "carbotui/demoweb.py", "carbotui/mailsink.py",
                 "carbotui/tui/fake.py"):
        assert gone not in files
    # and every module of the product (a sub-folder without __init__.py would be left out)
    source = {str(p.relative_to(ROOT)) for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")
              if "__pycache__" not in p.parts}
    assert source - set(files) == set()
    (top_level,) = wheel.glob("*.dist-info/top_level.txt")
    assert set(top_level.read_text().split()) == set(PRODUCT)


def test_demo_modules_are_not_in_the_wheel_but_in_the_checkout(wheel):
    for name in ("stack", "mailbox_web", "mailsink", "fake_source"):
        assert (ROOT / "demo" / f"{name}.py").is_file()
    assert not (wheel / "demo").exists()


def test_product_imports_only_declared_dependencies_static(wheel):
    """Every `import x` / `from x import` in the wheel (module level or lazy) names the
    standard library, the wheel's own packages or a declared dependency."""
    declared = _declared(wheel)
    assert {"textual", "ldap3", "cryptography", "psutil", "uvloop"} <= declared
    assert not declared & {"aiosmtpd", "hypothesis", "pytest"}
    allowed = set(sys.stdlib_module_names) | set(PRODUCT) | _import_names(declared) | declared
    bad = []
    for module, path in _modules(wheel).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops = [a.name.partition(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.partition(".")[0]]
            else:
                continue
            bad += [f"{module}:{node.lineno} imports {t}" for t in tops if t not in allowed]
    assert bad == [], "imports of undeclared distributions (declared: %s)" % sorted(declared)


def test_every_wheel_module_imports_with_only_the_declared_dependencies(wheel, tmp_path):
    """Import each module from the unpacked wheel (not the checkout: no site, no editable
    finder, no cwd on sys.path), with every other installed distribution blocked."""
    allowed_dists = _closure(_declared(wheel))
    installed = {_name(d.metadata["Name"]) for d in md.distributions() if d.metadata["Name"]}
    blocked = _import_names(installed - allowed_dists - {"carbotui"}) - set(PRODUCT)
    assert TEST_ONLY & blocked >= {"aiosmtpd", "hypothesis", "pytest"}
    code = textwrap.dedent("""
        import importlib, json, sys, traceback
        tree, purelib, platlib, blocked, modules = json.loads(sys.argv[1])
        sys.path[:0] = [tree]
        sys.path += [purelib, platlib]
        blocked = set(blocked)

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in blocked:
                    raise ModuleNotFoundError(f"No module named {name!r} (not declared)", name=name)

        sys.meta_path.insert(0, Blocked())
        failed, outside = {}, []
        for m in modules:
            try:
                mod = importlib.import_module(m)
            except BaseException:
                failed[m] = traceback.format_exc().strip().splitlines()[-1]
                continue
            if not (getattr(mod, "__file__", None) or "").startswith(tree):
                outside.append(m)
        print(json.dumps({"failed": failed, "outside": outside}))
    """)
    paths = sysconfig.get_paths()
    arg = json.dumps([str(wheel), paths["purelib"], paths["platlib"], sorted(blocked),
                      sorted(_modules(wheel))])
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code, arg], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result == {"failed": {}, "outside": []}
