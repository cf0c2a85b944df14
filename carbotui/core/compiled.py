"""A compiled module never shadows a newer edit of its source.

setup.py compiles a few modules with mypyc (MYPYC_MODULES there); their .so sits next to
the .py and wins the import. In a checkout (setup.py beside the package: editable installs,
`make compiled`), when a .py is newer than its .so (edited, or checked out, after the
build), every compiled module of the package is imported from its .py instead,
all of them together: mypyc links them into one library, so one interpreted module
beside compiled ones that call into the old code would mix two versions. A warning on
stderr names the stale module; `make compiled` (before `make test`) rebuilds.
CARBOTUI_PURE=1 in the environment runs them all as Python too. Run by
carbotui/__init__.py before any other carbotui module is imported.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ("core", "protocols", "proxy", "services")     # where setup.py's MYPYC_MODULES live


def compiled_modules() -> dict[str, tuple[str, str]]:
    """name -> (.py, .so) of each module with both files."""
    out = {}
    for sub in SUBPACKAGES:
        folder = os.path.join(PACKAGE, sub)
        try:
            files = os.listdir(folder)
        except OSError:
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            for f in files:
                if f.endswith(suffix):
                    stem = f[:-len(suffix)]
                    py = os.path.join(folder, stem + ".py")
                    if os.path.exists(py):
                        out[f"carbotui.{sub}.{stem}"] = (py, os.path.join(folder, f))
    return out


def stale(modules: dict[str, tuple[str, str]]) -> list[str]:
    """The compiled modules whose .py was modified after their .so was built."""
    return sorted(name for name, (py, so) in modules.items()
                  if os.stat(py).st_mtime_ns > os.stat(so).st_mtime_ns)


class PreferSource:
    """A meta path finder: these modules from their .py, never their .so."""

    def __init__(self, sources: dict[str, str]):
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        source = self.sources.get(name)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(
            name, source, loader=importlib.machinery.SourceFileLoader(name, source))


def guard() -> list[str]:
    """Installs PreferSource for every compiled module when one is stale or
    CARBOTUI_PURE=1; returns the stale ones."""
    if not os.path.exists(os.path.join(os.path.dirname(PACKAGE), "setup.py")):
        # an installed wheel, not a checkout: pip writes its files in any order, so the
        # times say nothing, and nobody edits them (CARBOTUI_PURE still applies)
        if os.environ.get("CARBOTUI_PURE") != "1":
            return []
    modules = compiled_modules()
    if not modules:
        return []
    pure = os.environ.get("CARBOTUI_PURE") == "1"
    old = [] if pure else stale(modules)
    if pure or old:
        if old:
            print(f"carbotui: {', '.join(old)} changed since it was compiled: running all "
                  f"compiled modules as Python (`make compiled` rebuilds them)", file=sys.stderr)
        sys.meta_path.insert(0, PreferSource({n: py for n, (py, _) in modules.items()}))
    return old
