"""The package's layers: no import cycles, and nothing imports from a layer above its own.

Every module under hkllm/ is parsed (nothing is imported), and every `import hkllm…` counts,
including those inside functions (a lazy import is still a dependency; only the import time
differs). From the bottom:

    errors → files, config, assets, precision → text → safety → data, serve → train → eval → app
    → the commands

A module may import its own package (unit) and the layers below; two units of one layer may not
import each other (data and serve know nothing of one another). A new module or package must be
placed here. hkllm/safety (guards, watermark) sits below serve and eval, which use it; hkllm/app
(the web app, a client of the gateway) above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hkllm"

LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"errors": ("hkllm.errors",)},
    {"files": ("hkllm.files",), "config": ("hkllm.config",), "assets": ("hkllm.assets",),
     "precision": ("hkllm.precision",)},
    {"text": ("hkllm.text",)},
    {"safety": ("hkllm.safety",)},
    {"data": ("hkllm.data",), "serve": ("hkllm.serve",)},
    {"train": ("hkllm.train",)},
    {"eval": ("hkllm.eval",)},
    {"app": ("hkllm.app",)},
    {"commands": ("hkllm", "hkllm.__main__", "hkllm.cli", "hkllm.quickstart", "hkllm.realmodel", "hkllm.stage_timer")},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(mods: dict[str, Path]) -> dict[str, dict[str, bool]]:
    """{module: {imported hkllm module: used at run time (not only under TYPE_CHECKING)}}."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:  # `from hkllm.text import clean`: the package hkllm.text
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, bool]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: dict[str, bool] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from hkllm import files` imports the module hkllm.files
                targets = [resolve(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base) for a in node.names]
            else:
                continue
            runtime = not _type_checking_only(node, parents)
            for target in targets:
                if target and target != mod and target.startswith("hkllm"):
                    edges[target] = edges.get(target, False) or runtime
        graph[mod] = edges
    return graph


def _contains(name: str, mod: str) -> bool:
    """mod is name, or inside the package name (hkllm itself stands for its __init__ only)."""
    is_package = name != "hkllm" and ROOT.parent.joinpath(*name.split(".")).is_dir()
    return mod == name or (is_package and mod.startswith(name + "."))


def unit_of(mod: str) -> tuple[int, str] | None:
    for level, units in enumerate(LAYERS):
        for unit, names in units.items():
            if any(_contains(n, mod) for n in names):
                return level, unit
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_and_from_imports():
    graph = imports(modules())
    assert "hkllm.data.readers" in graph["hkllm.data.build"]  # imported inside build()
    assert "hkllm.files" in graph["hkllm.train.data"]  # `from hkllm.files import …`
    assert "hkllm.serve.engine" in graph["hkllm.eval.backends"]


def test_no_import_cycles():
    graph = imports(modules())
    runtime = {mod: {t for t, at_run_time in edges.items() if at_run_time} for mod, edges in graph.items()}
    cycle = find_cycle(runtime)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_cycles_between_packages():
    graph = imports(modules())
    units: dict[str, set[str]] = {}
    for mod, edges in graph.items():
        for target in edges:
            a, b = unit_of(mod), unit_of(target)
            if a and b and a != b:
                units.setdefault(a[1], set()).add(b[1])
    cycle = find_cycle(units)
    assert cycle is None, "packages import each other: " + " → ".join(cycle)


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if unit_of(m) is None]
    assert not unplaced, f"place these in tests/test_layering.py LAYERS: {unplaced}"


def test_nothing_imports_from_a_layer_above():
    bad = []
    for mod, edges in imports(modules()).items():
        here = unit_of(mod)
        for target in edges:
            there = unit_of(target)
            if here and there and there[1] != here[1] and there[0] >= here[0]:
                bad.append(f"{mod} ({here[1]}) imports {target} ({there[1]})")
    assert not bad, "\n".join(bad)


def test_training_and_evaluation_do_not_load_datatrove():
    # They once did, through hkllm.data.steps, for a hash: hkllm.files.stable_hash is the one.
    mods = modules()
    users = set()
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "datatrove" for n in names):
                users.add(mod)
    assert users and all(m.startswith("hkllm.data.") for m in users), sorted(users)
    graph = imports(mods)
    for start in (m for m in mods if unit_of(m)[1] in ("train", "eval")):
        seen, todo = set(), [start]
        while todo:
            mod = todo.pop()
            assert mod not in users, f"{start} imports datatrove through {mod}"
            todo += [t for t in graph[mod] if t not in seen]
            seen.update(graph[mod])
