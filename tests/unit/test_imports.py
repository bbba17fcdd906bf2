"""The layout's two rules: pipeline_tasks/ is framework-free (it runs on a bare GPU box) and
no project module takes part in an import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("flows", "pipeline_tasks")


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = {**_modules("flows"), **_modules("pipeline_tasks")}


def imports(module: str) -> set[str]:
    """Every module ``module`` imports anywhere in its file (lazy imports included), resolved
    to the longest project module name, or to its top-level package for third-party code."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in MODULES and name != module:
                    found.add(name)
            else:
                found.add(name.split(".")[0])
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> project modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_circle() -> None:
    graph = {m: {i for i in imports(m) if i in MODULES} for m in MODULES}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_pipeline_tasks_never_imports_flows_prefect_or_mlflow() -> None:
    bad = {m: sorted(i for i in imports(m) if i.split(".")[0] in ("flows", "prefect", "mlflow"))
           for m in MODULES if m.startswith("pipeline_tasks")}
    assert not {m: b for m, b in bad.items() if b}


def test_pipeline_tasks_is_framework_free_when_imported() -> None:
    """The stages run on a bare GPU box: importing all of them pulls in no prefect or mlflow."""
    modules = [m for m in MODULES if m.startswith("pipeline_tasks")]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'mlflow', 'flows'))\n"
        + "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(modules) >= 20
