"""The ``pool`` stage: from the fine-tuned classifier, learn from the unlabeled images
(``pool.method``); ``pool/classifier.pt`` is then the run's model. The same stage runs from the
baselines too (``pool/baseline.pt`` from scratch, ``pool/init_baseline.pt`` from the starting
weights: same steps, seed, labels and pool), so that each lift is measured against a model that
differs from this one in one thing alone. ``pool.method: none`` writes only ``summary.json``
and the fine-tuned classifier stays the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext, require, require_validated
from flows.tracking.runs import log_runtime, mlflow_log_metrics, stage_run
from pipeline_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from pipeline_tasks.finetune.pool import PoolRecord

# From fine-tuning's file of the same name: the run's model, and the baselines it is compared with
# (from scratch; from the starting weights without self-supervised pretraining), so that each
# lift compares two models that went through the same pool stage.
OUTPUTS = {"classifier": "classifier.pt", "baseline": "baseline.pt", "init_baseline": "init_baseline.pt"}


def _prefixed(prefix: str) -> Callable[[dict[str, float], int], None]:
    return lambda metrics, step: mlflow_log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step)


def run_pool(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> PoolRecord | None:
    from pipeline_tasks.finetune.pool import learn_from_pool  # noqa: PLC0415
    from pipeline_tasks.finetune.subsets import LABELS  # noqa: PLC0415

    require_validated(paths)
    require(paths.finetune / "classifier.pt", "finetune")
    paths.pool.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS.values():
        (paths.pool / name).unlink(missing_ok=True)
    if cfg.pool.method == "none":
        (paths.pool / "summary.json").write_text(json.dumps({"method": "none"}) + "\n")
        return None
    with stage_run("pool", ctx, cfg, cfg.section("pool")):
        records: dict[str, PoolRecord] = {}
        for role, name in OUTPUTS.items():
            start = paths.finetune / name
            if start.is_file():
                log = mlflow_log_metrics if role == "classifier" else _prefixed(
                    "scratch_" if role == "baseline" else "init_")
                records[role] = learn_from_pool(paths.preprocessed, start, cfg.pool, paths.finetune / LABELS,
                                                paths.pool / name, cfg.finetune.augment, log)
        record = records["classifier"]
        mlflow.log_metrics({"pool_start_val_accuracy": record.start_val_accuracy,
                            "pool_best_val_accuracy": record.best_val_accuracy,
                            "pool_images": record.pool_images})
        if "baseline" in records:
            mlflow.log_metric("scratch_pool_best_val_accuracy", records["baseline"].best_val_accuracy)
        log_runtime(record.runtime)
        summary = {"method": cfg.pool.method, **{role: r.to_dict() for role, r in records.items()}}
        (paths.pool / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return record
