"""The ``preprocess`` stage: splits by content and the uint8 image cache, from the manifests the
gate passed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext, require, require_validated
from flows.tracking.runs import stage_run
from pipeline_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from pipeline_tasks.data.preprocess import PreprocessRecord


def run_preprocess(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> PreprocessRecord:
    from pipeline_tasks.data.preprocess import preprocess_data  # noqa: PLC0415

    require_validated(paths)
    manifest = require(paths.validation / "manifest.csv", "validate")
    params = {**cfg.section("data"), **cfg.section("preprocess")}
    with stage_run("preprocess", ctx, cfg, params):
        pool = None
        if cfg.data.unlabeled_dir:
            pool = (require(paths.validation / "pool_manifest.csv", "validate"), cfg.data.unlabeled_dir)
        record = preprocess_data(manifest, cfg.data.dir, cfg.data, cfg.preprocess, paths.preprocessed, pool)
        mlflow.log_metrics({"n_train": record.n_train, "n_val": record.n_val, "n_test": record.n_test,
                            "n_pool": record.n_pool})
        mlflow.set_tag("test_split_sha256", record.test_split_sha256)
        mlflow.log_artifact(str(paths.preprocessed / "splits.csv"), "preprocess")
        return record
