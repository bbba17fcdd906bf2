"""The ``evaluate`` stage: the run's model and its baselines on the held-out test split, the
reference points, the plots and ``metrics.json``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext, final_classifier, require, require_validated
from flows.tracking.runs import log_runtime, stage_run
from pipeline_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from pipeline_tasks.evaluation.evaluate import EvaluateRecord


def run_evaluate(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> EvaluateRecord:
    """Baselines by what they lack (``evaluation.evaluate.lift_names``): ``scratch`` (no
    pretraining, no pool), ``scratch_pool`` (no pretraining), ``pretrained`` (no pool stage),
    ``init`` and ``init_pool`` (the starting weights without self-supervised pretraining)."""
    from pipeline_tasks.evaluation.evaluate import evaluate_classifier  # noqa: PLC0415
    from pipeline_tasks.finetune.subsets import LABELS  # noqa: PLC0415

    require_validated(paths)
    classifier = final_classifier(paths)
    trained = json.loads(require(paths.finetune / "summary.json", "finetune").read_text())["classifier"]
    candidates = {"scratch": paths.finetune / "baseline.pt", "init": paths.finetune / "init_baseline.pt",
                  "pretrained": paths.finetune / "classifier.pt", "scratch_pool": paths.pool / "baseline.pt",
                  "init_pool": paths.pool / "init_baseline.pt"}
    baselines = {name: path for name, path in candidates.items() if path.is_file() and path != classifier}
    with stage_run("evaluate", ctx, cfg, cfg.section("evaluate")):
        record = evaluate_classifier(
            paths.preprocessed, classifier, cfg.evaluate, paths.metrics, paths.plots, baselines,
            {"labels_used": trained["labels_used"], "train_labels": trained["n_labeled"],
             "val_labels": trained["n_val_labels"]},
            (require(paths.pretrain / "encoder.pt", "pretrain"), paths.finetune / LABELS))
        metrics = json.loads(paths.metrics.read_text())
        mlflow.log_metrics(metrics)
        log_runtime(record.runtime)
        mlflow.log_artifact(str(paths.metrics))
        mlflow.log_artifacts(str(paths.plots), "plots")
        return record  # the flow puts the headline numbers on its own run, cached or not
