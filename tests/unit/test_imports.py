"""The layout's rules: pipeline_tasks/ is framework-free (it runs on a bare GPU box), flows/ is in
packages by concern, no module is long, and no project module takes part in an import circle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from pipeline_tasks import codehash
from tests.conftest import REPO, write_tiny_params

MODULES = codehash.module_files(("flows", "pipeline_tasks"))


def third_party(module: str) -> set[str]:
    """Top-level names of the packages outside the project that ``module`` imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
    return found - {"flows", "pipeline_tasks"}


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
    graph = {m: codehash.imports(m, MODULES) for m in MODULES}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_pipeline_tasks_never_imports_flows_prefect_or_mlflow() -> None:
    bad = {m: sorted({*third_party(m) & {"prefect", "mlflow"},
                      *(i for i in codehash.imports(m, MODULES) if i.startswith("flows"))})
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


def test_the_validate_stage_process_imports_no_torch(tmp_path: Path, tiny_data: Path) -> None:
    """`dvc repro` runs each stage as a process of its own: the gate needs Great Expectations,
    not torch, torchvision or Lightning (each stage imports only its own libraries, about 4 s
    less per stage on a 2-core CPU)."""
    write_tiny_params(tmp_path / "params.yaml", f"data.dir={tiny_data}")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli.main", "stage", "validate"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "great_expectations" in imported and (tmp_path / "artifacts/validation/report.json").is_file()
    heavy = imported & {"torch", "torchvision", "lightning_fabric"}
    assert not heavy, f"stage validate imported {sorted(heavy)}"


def test_flows_is_in_packages_by_concern_each_saying_what_lives_there() -> None:
    """``flows/`` has no flat module; each of its packages says in its ``__init__`` what lives
    there; no module of the product grows past ~300 lines."""
    assert not [p.name for p in (REPO / "flows").glob("*.py") if p.name != "__init__.py"]
    packages = sorted(p for p in (REPO / "flows").iterdir() if (p / "__init__.py").is_file())
    assert [p.name for p in packages] == ["cli", "orchestration", "registry", "stages", "tracking"]
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and doc.count(". ") == 0 and doc.endswith("."), package.name  # one sentence
    long = {str(p.relative_to(REPO)): n for root in ("flows", "pipeline_tasks")
            for p in (REPO / root).rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long
