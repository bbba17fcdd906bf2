"""What the stages read and write under ``artifacts/`` (the outputs the stage graph declares),
what every stage run needs from its caller, and the checks a stage makes before it reads.

Lineage: each stage writes ``lineage.json`` beside its outputs, an id for what it computed and
the ids of the outputs it read; a stage starts only when the outputs it reads belong together
(``check_inputs``). An output left by an earlier run is refused, never silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.orchestration import graph
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.errors import DataError


def _under(name: str) -> Any:
    return property(lambda self: self.root / name)


@dataclass(frozen=True)
class ArtifactPaths:
    """Where each stage writes (the outputs the stage graph declares; a test keeps them equal)."""

    root: Path = Path("artifacts")
    validation = _under("validation")
    preprocessed = _under("preprocessed")
    start = _under("start")
    pretrain = _under("pretrain")
    finetune = _under("finetune")
    pool = _under("pool")
    metrics = _under("metrics.json")
    plots = _under("plots")
    registered = _under("registered.json")


@dataclass(frozen=True)
class RunContext:
    """What every stage run needs from its caller; nothing here enters a cache key."""

    experiment_id: str
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    record_data: bool = False  # dvc add the tracked data folders once the gate opens


def require(path: Path, stage: str) -> Path:
    """An upstream output; missing means the user ran a stage out of order."""
    if not path.exists():
        raise DataError(
            f"{path}: not found. It is written by the '{stage}' stage: run "
            f"`pretrainflow stage {stage}` (or `dvc repro`, or `pretrainflow run`) first."
        )
    return path


def require_validated(paths: ArtifactPaths) -> dict[str, Any]:
    """The validation report, when the gate opened. A stage never consumes the outputs of a
    failed check (``dvc repro -s preprocess`` would split the manifest a failed check left
    behind): the report's verdict decides, not a file's existence."""
    report = json.loads(require(paths.validation / "report.json", "validate").read_text())
    if not report.get("success"):
        failed = "; ".join(f"{f['expectation']} on {f['column'] or 'the class table'} ({f['suite']})"
                           for f in report.get("failures", [])) or "unknown"
        raise DataError(f"{paths.validation / 'report.json'}: the last validation failed ({failed}). "
                        "Fix the data as that report says and run `pretrainflow stage validate` (or "
                        "`pretrainflow run`) again; no stage uses the outputs of a failed check.")
    return dict(report)


def final_classifier(paths: ArtifactPaths) -> Path:
    """The run's model: the pool stage's when it ran, else the fine-tuned classifier."""
    pooled = paths.pool / "classifier.pt"
    return pooled if pooled.is_file() else require(paths.finetune / "classifier.pt", "finetune")


def _lineage_file(paths: ArtifactPaths, stage: str) -> Path | None:
    declared = graph.BY_NAME[stage].lineage
    return None if declared is None else paths.root / Path(declared).relative_to(graph.ARTIFACTS)


def _recorded(paths: ArtifactPaths, stage: str) -> dict[str, Any]:
    file = _lineage_file(paths, stage)
    assert file is not None
    if not file.is_file():
        raise DataError(
            f"{file.parent}: not found, or not the output of a finished '{stage}' stage (it has no "
            f"{file.name}). It is written by the '{stage}' stage: run `pretrainflow stage {stage}` (or `dvc "
            "repro`, or `pretrainflow run`) first.")
    return dict(json.loads(file.read_text()))


def check_inputs(paths: ArtifactPaths, stage: str) -> dict[str, str]:
    """The lineage ids of the stages ``stage`` reads, once their outputs are shown to belong
    together: every input was computed from the outputs now on disk of the stages before it.
    A folder left by an earlier run (a stale ``artifacts/pool`` beside a new fine-tune, a
    cache of other data) is a ``DataError`` naming the stage to run again."""
    if "validate" in graph.ancestors(stage):
        require_validated(paths)  # a closed gate says why, before any missing output
    lineage = {name: _recorded(paths, name) for name in graph.ancestors(stage)
               if _lineage_file(paths, name) is not None}
    for name, record in lineage.items():
        for source, recorded_id in record["inputs"].items():
            if source in lineage and lineage[source]["id"] != recorded_id:
                here, there = (graph.BY_NAME[s].lineage or s for s in (name, source))
                raise DataError(
                    f"{Path(here).parent} was computed from another {Path(there).parent} than the one there "
                    f"now (an earlier run's, or one computed again since), so the '{stage}' stage would mix "
                    f"outputs of two runs: run `pretrainflow stage {name}` and the stages after it (or "
                    "`dvc repro`, or `pretrainflow run`) first")
    return {name: lineage[name]["id"] for name in graph.upstream(stage) if name in lineage}


def forget_lineage(paths: ArtifactPaths, stage: str) -> None:
    """Remove the stage's lineage before it writes: outputs of a run that fails half-way are
    never taken for a finished run's."""
    file = _lineage_file(paths, stage)
    if file is not None:
        file.unlink(missing_ok=True)


def record_lineage(paths: ArtifactPaths, stage: str, cfg: PipelineConfig, inputs: dict[str, str],
                   content: str = "") -> None:
    """Write the stage's lineage: its id and its inputs' ids. The id is a sha256 over the stage
    and ``content`` when the stage's outputs have a content identity (the gate's data digest, the
    start's decision: a new param that changes nothing there stales nothing downstream), else
    over the stage, the params it reads, its code and its inputs' ids (its recipe)."""
    file = _lineage_file(paths, stage)
    if file is None:
        return
    recipe = {"stage": stage, "content": content} if content else {
        "stage": stage, "params": cfg.section_digest(*graph.BY_NAME[stage].params),
        "code": graph.code_digest(stage), "inputs": inputs}
    blob = json.dumps(recipe, sort_keys=True)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"stage": stage, "id": hashlib.sha256(blob.encode()).hexdigest(),
                                "inputs": inputs}, indent=2) + "\n")
