"""A run's starting weights (``pretrain.init``) as one resolved file, through the one resolver
(``pipeline_tasks.models.starts``) with the MLflow registry plugged in, and what every run says
about them: the file, its sha256, its licence."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, require
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.ssl.start_record import START_FILE, read_start

if TYPE_CHECKING:
    from pipeline_tasks.models.starts import ResolvedWeights

log = logging.getLogger("pipeline_tasks.starts")  # the engine's logger: shown in the flow run's log


def starting_weights(cfg: PipelineConfig) -> ResolvedWeights | None:
    """``pretrain.init`` resolved offline (downloads only with ``pretrain.allow_download``); a
    registered encoder (``models:/…``) is downloaded from the tracking store. None without one.
    Raises the resolver's ``ValueError`` naming where it looked and the switch to pass."""
    from flows.registry.encoders import download_encoder  # noqa: PLC0415 - mlflow's registry
    from pipeline_tasks.models.starts import resolve_weights  # noqa: PLC0415 - torch

    init = cfg.pretrain.init
    if not init:
        return None
    return resolve_weights(init, cfg.pretrain.encoder, cfg.pretrain.allow_download, registry=download_encoder)


def log_starting_weights(weights: ResolvedWeights | None) -> None:
    """The starting file, its sha256, licence and source: in the run's log and as params of the
    active MLflow run."""
    if weights is None:
        return
    log.info("starting weights %s: %s", weights.label(), weights.describe())
    mlflow.log_params({"init_file": str(weights.path), "init_sha256": weights.sha256,
                       "init_licence": weights.licence[:500], "init_source": weights.source[:500]})


def started(cfg: PipelineConfig, paths: ArtifactPaths) -> PipelineConfig:
    """``cfg`` with the start stage's encoder and weights in ``pretrain``: what the training
    stages run."""
    require(paths.start / START_FILE, "start")
    return cfg.model_copy(update={"pretrain": read_start(paths.start).applied(cfg.pretrain)})
