"""dvc.yaml stays the truth about the stage graph: every project module a stage imports is
one of its deps (so `dvc repro` reruns it when that code changes), and the data folder is the
parameter data.dir, not a second copy of its value."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# What each stage runs: `pretrainflow stage NAME` -> flows/stages.py's runner -> these modules.
# flows/stages.py and flows/tracking.py hold every runner, so every stage depends on them; their
# own imports are the other stages' code and are not followed.
STAGE_ROOTS = {
    "validate": ["pipeline_tasks.validate"],
    "preprocess": ["pipeline_tasks.preprocess"],
    "pretrain": ["pipeline_tasks.pretrain"],
    "finetune": ["pipeline_tasks.finetune"],
    "evaluate": ["pipeline_tasks.evaluate"],
    "register": ["flows.registry", "flows.pyfunc_model"],
}
COMMON = ["flows.stages", "flows.tracking", "pipeline_tasks.config"]
NOT_FOLLOWED = {"flows.stages"}


def _file(module: str) -> Path | None:
    path = REPO / (module.replace(".", "/") + ".py")
    return path if path.is_file() else None


def _imports(module: str) -> set[str]:
    """Project modules ``module`` imports (absolute imports of flows.* and pipeline_tasks.*)."""
    path = _file(module)
    assert path is not None, module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n.split(".")[0] in ("flows", "pipeline_tasks") and _file(n)}
    return found


def closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            if module not in NOT_FOLLOWED:
                todo += _imports(module)
    return seen


@pytest.fixture(scope="module")
def stages() -> dict[str, dict]:
    return dict(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("stage", sorted(STAGE_ROOTS))
def test_deps_cover_every_module_the_stage_imports(stage: str, stages: dict[str, dict]) -> None:
    assert stages[stage]["cmd"] == f"pretrainflow stage {stage}"
    deps = set(stages[stage]["deps"])
    needed = {str(_file(m).relative_to(REPO)) for m in closure(STAGE_ROOTS[stage] + COMMON)}  # type: ignore[union-attr]
    assert not needed - deps, f"dvc.yaml stage {stage} misses deps {sorted(needed - deps)}"


def test_the_closure_follows_imports() -> None:
    # the check above is only as good as this: finetune reaches preprocess through its import
    assert {"pipeline_tasks.preprocess", "pipeline_tasks.models"} <= closure(["pipeline_tasks.finetune"])


def test_the_data_folder_is_the_parameter(stages: dict[str, dict]) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in ("validate", "preprocess"):
        assert "${data.dir}" in stages[name]["deps"] and params["data"]["dir"] not in stages[name]["deps"]
