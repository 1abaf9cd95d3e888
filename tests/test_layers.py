"""The floors of docs/design.md are the import rule: every module of distgan/ is on one floor and imports
only lower floors (or siblings in its own package), so the graph has no cycle and nothing runs back up.
Function-level (lazy) imports count: they tie the modules as much as top-level ones do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distgan"


def floors() -> dict[str, int]:
    text = (ROOT / "docs" / "design.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no ```layers block"
    table = {}
    for line in block.group(1).strip().splitlines():
        level, *names = line.split()
        for name in names:
            assert name not in table, f"{name} is on two floors"
            table[name] = int(level)
    return table


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def room(module: str) -> str | None:
    """The floor map's name of a module: its top-level file or package under distgan/."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The distgan modules ``path`` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            names = subs or [node.module]
        else:
            continue
        for name in names:
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name.startswith("distgan"):
                out.add(name)
    return out


def violations(table: dict[str, int]) -> list[str]:
    known = modules()
    bad = []
    for module, path in sorted(known.items()):
        mine = room(module)
        if mine is None:  # distgan/__init__.py: the package's face
            continue
        if mine not in table:
            bad.append(f"{module}: {mine} is on no floor of docs/design.md")
            continue
        for target in sorted(imports(path, known)):
            theirs = room(target)
            if theirs is None or theirs == mine:
                continue
            if theirs not in table:
                bad.append(f"{module} imports {target}, which is on no floor")
            elif table[theirs] >= table[mine]:
                bad.append(f"{module} (floor {table[mine]}) imports {target} (floor {table[theirs]})")
    return bad


def test_every_module_imports_only_lower_floors():
    assert violations(floors()) == []


def test_the_rule_catches_an_import_that_runs_back_up():
    """The check itself can fail: with config moved above data, data's import of config is refused."""
    table = floors()
    table["config"] = table["data"] + 1
    assert any(v.startswith("distgan.data") and "imports distgan.config" in v for v in violations(table))


def test_every_floor_names_a_module_that_exists():
    rooms = {room(m) for m in modules()}
    missing = [name for name in floors() if name not in rooms]
    if missing:
        pytest.fail(f"docs/design.md's floors name modules that do not exist: {missing}")


def cycles() -> list[list[str]]:
    """Import cycles among the modules (inside a package too, which the floors do not order)."""
    known = modules()
    graph = {m: sorted(t for t in imports(p, known) if t != m and t != "distgan") for m, p in known.items()}
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_even_inside_a_package():
    """A package's ``__init__`` may hand on its modules' names; no module imports back the one importing it."""
    inits = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert [c for c in cycles() if not set(c) & inits] == []
