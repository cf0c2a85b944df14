"""The package's layers only look down, and no modules import each other in a circle.

    core (pure) <- protocols (sans-IO) <- backends <- services <- proxy | admin <- tui <- cli

Every import of a carbotui module is counted, at module level and inside functions alike
(a lazy import is still a dependency); an import only for type checkers (under
``if TYPE_CHECKING:``) must look down too, but makes no cycle, since it never runs. A new
upward import or a new cycle fails here with the modules named.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "carbotui"
RANK = {"core": 0, "protocols": 1, "backends": 2, "services": 3, "proxy": 4, "admin": 4,
        "tui": 5, "cli": 6}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _typing_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            out |= {id(n) for b in node.body for n in ast.walk(b)}
    return out


def _imports(name: str, path: Path, known: set[str], *, runtime_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _typing_only(tree) if runtime_only else set()
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "carbotui":
                found.add(t)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph(*, runtime_only: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: {t for t in _imports(name, path, known, runtime_only=runtime_only)
                   if _layer(t) is not None}
            for name, path in modules.items()}


def test_every_module_is_in_a_layer():
    stray = [m for m in _modules() if m != "carbotui" and _layer(m) not in RANK]
    assert stray == [], f"modules outside the layers {sorted(RANK)}: {stray}"


def test_imports_only_look_down():
    upward = []
    for module, targets in _graph().items():
        here = _layer(module)
        if here is None:
            continue
        for t in targets:
            there = _layer(t)
            if there == here:
                continue
            if RANK[there] > RANK[here] or (RANK[there] == RANK[here] and there != here):
                upward.append(f"{module} -> {t}")
    assert upward == [], "imports that look up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph(runtime_only=True)
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for t in sorted(graph.get(node, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_core_imports_nothing_else_of_carbotui():
    graph = _graph()
    for module, targets in graph.items():
        if _layer(module) == "core":
            assert {_layer(t) for t in targets} <= {"core"}, (module, targets)
