"""The package's shape: the surgery core stands alone, and the import graph has no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eqsurgeon"


def test_the_core_imports_no_trainer_zoo_or_cli() -> None:
    probe = (
        "import sys\n"
        "import eqsurgeon, eqsurgeon.api, eqsurgeon.calibration, eqsurgeon.sites, eqsurgeon.measure\n"
        "import eqsurgeon.io, eqsurgeon.images, eqsurgeon.equalize, eqsurgeon.capture\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['eqsurgeon', 'training'], ['eqsurgeon', 'zoo'], ['eqsurgeon', 'cli'])))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports() -> dict[str, set[str]]:
    # module -> eqsurgeon modules it imports, lazy (function-level) and TYPE_CHECKING imports included
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eqsurgeon"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            own = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
            graph[name] |= own
    return graph


def test_no_import_cycles() -> None:
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


@pytest.mark.parametrize("library", ["typer", "rich"])
def test_typer_and_rich_only_in_the_cli(library: str) -> None:
    allowed = ("eqsurgeon.cli",)
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if name.startswith(allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == library or n.startswith(library + ".") for n in names):
                offenders.append(name)
    assert offenders == []
