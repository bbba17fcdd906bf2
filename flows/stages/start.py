"""The ``start`` stage: where pretraining starts, scratch or ImageNet (``pipeline_tasks.ssl.start``),
decided before anything trains and recorded in ``artifacts/start/start.json`` for the stages that
train (pretraining's encoder and weights, fine-tuning's baseline from the starting weights)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext, require, require_validated
from flows.tracking.runs import stage_run
from pipeline_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from pipeline_tasks.ssl.start_record import StartRecord


def run_start(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> StartRecord:
    from pipeline_tasks.ssl.start import choose_start  # noqa: PLC0415 - torch, timm

    require_validated(paths)
    require(paths.preprocessed / "train_images.npy", "preprocess")
    with stage_run("start", ctx, cfg, {"start": cfg.pretrain.start, "init": cfg.pretrain.init}):
        record = choose_start(paths.preprocessed, cfg.pretrain, cfg.finetune, paths.start)
        mlflow.log_params({"chosen_start": record.choice, "chosen_encoder": record.encoder,
                           "chosen_init": record.init})
        mlflow.set_tag("start_reason", record.reason[:5000])
        if record.probe:
            mlflow.log_metrics({f"probe_{k}": v for k, v in record.probe.items()})
        return record
