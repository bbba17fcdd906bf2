"""The ``register`` stage: the run's model in the MLflow registry, and the promotion gate's
decision on its aliases."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext, final_classifier, require, require_validated
from flows.tracking.runs import stage_run
from pipeline_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from flows.registry.register import RegisterRecord


def data_version(report: dict[str, str], ctx: RunContext) -> str:
    """The DVC md5 of the data (and of the pool), or the gate's content digest for a folder
    outside DVC."""
    version = ctx.tags.get("data_dvc_md5", "untracked")
    if version == "untracked":
        version = f"sha256:{report['data_digest']}"
    if ctx.tags.get("pool_dvc_md5"):
        version += f" + pool {ctx.tags['pool_dvc_md5']}"
    return version


def run_register(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext,
                 apply: bool = True) -> RegisterRecord:
    """Register the classifier and decide on the aliases; with ``apply`` (``pretrainflow
    stage register``, the last DVC stage) move them now. The flow passes ``apply=False`` and
    moves them only after every other step has succeeded."""
    from flows.registry.register import apply_decision, register_model  # noqa: PLC0415

    report = require_validated(paths)
    classifier = final_classifier(paths)
    metrics = json.loads(require(paths.metrics, "evaluate").read_text())
    split = json.loads(require(paths.preprocessed / "splits.json", "preprocess").read_text())
    version = data_version(report, ctx)
    active = mlflow.active_run()
    on_parent = bool(ctx.parent_run_id) and active is not None and active.info.run_id == ctx.parent_run_id
    if on_parent:  # in the flow: the model goes on its run, which holds the metrics (the version's source)
        record = register_model(classifier, metrics, split, cfg, str(ctx.parent_run_id), version, paths)
    with stage_run("register", ctx, cfg, cfg.section("register")) as run_id:
        if not on_parent:
            record = register_model(classifier, metrics, split, cfg, run_id, version, paths)
        if apply:
            record = apply_decision(record)
        mlflow.set_tags({"gate_reason": record.reason[:5000]})
        paths.registered.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        return record
