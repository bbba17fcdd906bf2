"""The ``pretrain`` stage: self-supervised pretraining of the encoder, resumably, and its
registration. Under ``torchrun`` every rank trains; only rank 0 talks to MLflow."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext, require, require_validated
from flows.stages.starts import log_starting_weights, started, starting_weights
from flows.tracking.runs import log_runtime, mlflow_log_metrics, stage_run
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.ssl import world

if TYPE_CHECKING:
    from pipeline_tasks.ssl.trainer import PretrainRecord


def run_pretrain(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> PretrainRecord:
    """Checkpoints go under ``artifacts/checkpoints/pretrain``, outside the stage's DVC output,
    which DVC clears before a run."""
    from flows.registry.encoders import register_encoder  # noqa: PLC0415
    from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: PLC0415

    require_validated(paths)
    require(paths.preprocessed / "train_images.npy", "preprocess")
    cfg = started(cfg, paths)  # the start stage's encoder and weights
    weights = starting_weights(cfg)
    train = partial(pretrain_encoder, paths.preprocessed, cfg.pretrain, paths.pretrain,
                    checkpoint_dir=paths.root / "checkpoints" / "pretrain", init_path=weights)
    if not world.current().is_main:
        return train()
    with stage_run("pretrain", ctx, cfg, cfg.section("pretrain")):
        log_starting_weights(weights)
        record = train(log_metrics=mlflow_log_metrics)
        mlflow.log_metrics({"pretrain_images": record.n_images, "pretrain_pool_images": record.n_pool,
                            "data_wait_share": record.data_wait_share, "steps_trained": record.steps_trained,
                            "total_steps": record.total_steps, "images_seen": record.images_seen})
        log_runtime(record.runtime)
        if record.resumed_at_epoch:
            mlflow.set_tag("resumed_at_epoch", str(record.resumed_at_epoch))
        mlflow.log_artifact(record.encoder_path, "pretrain")
        mlflow.log_artifact(str(paths.pretrain / "views.png"), "pretrain")
        mlflow.set_tag("encoder_version", register_encoder(record.encoder_path, paths.preprocessed))
        return record
