"""The package's shape, checked on its source: imports flow one way, with no cycle, and every SQL
statement lives in state/. Run alone: `python -m pytest -q tests/test_architecture.py`.

Layers, lowest first: `state` and `model` (independent of each other and of everything else), then
`ingest` (reads files into `state`), then `daemon` on top. `bench` sits above the package and is not
installed with it; nothing in the package imports it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("state", "model", "ingest", "daemon")
MAY_IMPORT = {
    "state": {"state"},
    "model": {"model"},
    "ingest": {"ingest", "state"},
    "daemon": {"daemon", "state", "model", "ingest"},
}
SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s(OR\s\w+\s)?INTO|UPDATE\s\[?\w+\]?\sSET|DELETE\sFROM|CREATE\s(TABLE|INDEX|VIEW)"
    r"|PRAGMA\s\w+|BEGIN\sIMMEDIATE)\b",
    re.S,
)


def modules() -> dict[str, Path]:
    """engram_ff.<package>.<module> -> its file, for every module of the installed packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(("engram_ff", *parts)).removesuffix(".__init__")] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """The engram_ff modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("engram_ff")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engram_ff"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports(path, name) if m in known and m != name} for name, path in known.items()}


def test_imports_flow_down_the_layers():
    upward = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        if target.split(".")[1] not in MAY_IMPORT[name.split(".")[1]]
    ]
    assert upward == []


def test_no_module_imports_the_benchmarks():
    for name, path in modules().items():
        assert not any(m.startswith("engram_ff.bench") for m in imports(path, name)), name


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, str] = {}  # white (absent), grey (on the path), black (done)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "grey"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "grey":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "black"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_every_sql_statement_is_in_state():
    outside = []
    for name, path in modules().items():
        if name.startswith("engram_ff.state"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                outside.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert outside == []


def test_the_checks_see_the_package():
    edges = graph()
    assert "engram_ff.state.db" in edges["engram_ff.ingest.watcher"]  # the scan finds real imports
    assert SQL.search("SELECT id FROM runs") and SQL.search("INSERT OR IGNORE INTO messages")
    assert not SQL.search("select the newest update and set its status")
