"""The ``finetune`` stage: the classifier on the labeled subset and, beside it, the baselines
on the same labels and steps: the same network from scratch (``baseline.pt``) and, when
pretraining started from ``pretrain.init``, fine-tuned from those weights directly
(``init_baseline.pt``); ``summary.json`` records them all."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext, require, require_validated
from flows.stages.starts import started, starting_weights
from flows.tracking.runs import Curves, log_runtime, stage_run
from pipeline_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from pipeline_tasks.finetune.train import FinetuneRecord


def run_finetune(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> FinetuneRecord:
    from pipeline_tasks.evaluation.plots import validation_curves  # noqa: PLC0415
    from pipeline_tasks.finetune.train import finetune_classifier  # noqa: PLC0415

    require_validated(paths)
    classes = tuple(json.loads(require(paths.preprocessed / "classes.json", "preprocess").read_text()))
    encoder = require(paths.pretrain / "encoder.pt", "pretrain")
    cfg = started(cfg, paths)  # the init baseline starts from the start stage's weights
    params = {**cfg.section("finetune"), "pretrain_init": cfg.pretrain.init}
    with stage_run("finetune", ctx, cfg, params):
        curves = Curves()
        record = finetune_classifier(paths.preprocessed, encoder, classes, cfg.finetune,
                                     paths.finetune, curves.logger(f"{cfg.finetune.mode} (this model)"))
        records = {"classifier": record.to_dict()}
        baselines = {"scratch": (paths.finetune / "baseline.pt", None),
                     "init": (paths.finetune / "init_baseline.pt", starting_weights(cfg))}
        for name, (path, init) in baselines.items():
            path.unlink(missing_ok=True)
            if (not cfg.finetune.baseline or cfg.finetune.mode == name
                    or (name == "init" and init is None)):
                continue
            base = finetune_classifier(paths.preprocessed, encoder, classes, cfg.finetune, paths.finetune,
                                       curves.logger(name, f"{name}_"), mode=name, out_name=path.name,
                                       init_path=init)
            records[f"{name}_baseline" if name == "init" else "baseline"] = base.to_dict()
            mlflow.log_metric(f"{name}_best_val_accuracy", base.best_val_accuracy)
        mlflow.log_metrics({"best_val_accuracy": record.best_val_accuracy, "n_labeled": record.n_labeled,
                            "n_val_labels": record.n_val_labels, "labels_used": record.labels_used,
                            "steps": record.steps})
        log_runtime(record.runtime)
        mlflow.log_artifact(str(validation_curves(curves.points, paths.finetune / "validation_curves.png")),
                            "plots")
        (paths.finetune / "summary.json").write_text(json.dumps(records, indent=2) + "\n")
        return record
