"""The Prefect flow ``pretrain-finetune``: the stages as tasks (``tasks``), one MLflow parent run.

Tasks pass small frozen records (paths, numbers), never tensors. Every cached task is keyed
on its own params sections, the pipeline code, and its upstream result, which carries the
sha256 of the upstream outputs (and, through validate, the data digest): changing
``finetune.lr`` reruns finetune and what follows, nothing before it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.exceptions import MlflowException
from prefect import flow, get_client
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.orchestration.lock import ProjectBusy, project_lock
from flows.orchestration.reports import (
    mlflow_ui,
    model_url,
)
from flows.orchestration.summary import (
    describe_parent_run,
    devices,
    first_screen,
    links,
    model_rows,
    publish,
    tracking_failure,
)
from flows.orchestration.tasks import (
    COMPUTE_STAGES,
    move_aliases_task,
    register_task,
    run_cached_stage,
    validate_data_task,
)
from flows.registry.register import RegisterRecord
from flows.stages.artifacts import ArtifactPaths, RunContext
from flows.stages.starts import starting_weights
from flows.tracking.runs import JOB_TAG, fail_runs_of, lineage_tags, setup_tracking
from pipeline_tasks.config import PipelineConfig, load_config
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.validate import ValidationRecord


@flow(name="pretrain-finetune", log_prints=True)
def pretrain_finetune(
    params: str = "params.yaml", overrides: list[str] | None = None,
    data_dir: str | None = None, no_cache: bool = False, artifacts: str = "artifacts",
    record_data: bool = False,
) -> Any:
    """Validate -> preprocess -> start -> pretrain -> finetune (and its baselines) -> pool ->
    evaluate -> register, with one MLflow run holding a nested run per stage.

    Args:
        params: The params file, relative to the folder the run starts in (params.yaml).
        overrides: Changes to the params for this run only, one per item, as section.key=value
            (the value is YAML), e.g. finetune.lr=0.003, pretrain.epochs=80,
            finetune.label_fraction=0.1 or data.unlabeled_dir=unlabeled. Any key of params.yaml.
        data_dir: The labeled images, laid out as class folders of images; empty: data.dir of the params.
        no_cache: Run every stage again, ignoring Prefect's cache of earlier results.
        artifacts: The folder the stages write their outputs to.
        record_data: Record the data folders with dvc add once they pass validation (the folders of this
            DVC project only), so that the run points at a version dvc checkout restores.
    """
    started = time.perf_counter()
    sets = list(overrides or []) + ([f"data.dir={json.dumps(data_dir)}"] if data_dir else [])
    cfg = load_config(params, sets)
    paths = ArtifactPaths(Path(artifacts).resolve())
    try:
        with project_lock(paths.root, f"pretrainflow run (flow run {flow_run.name})") as job:
            return _tracked(cfg, paths, record_data, no_cache, started, job)
    except ProjectBusy as exc:
        return Failed(message=str(exc))


def _tracked(cfg: PipelineConfig, paths: ArtifactPaths, record_data: bool, no_cache: bool, started: float,
             job: Any) -> Any:
    """The flow inside its MLflow parent run, which ends FAILED whatever stops it here; a user's
    fault (bad data, a refused input) and a tracking store that fails end the flow run Failed
    with one message."""
    experiment_id = setup_tracking(cfg.tracking.experiment)
    if job.crashed:
        fail_runs_of(job.crashed, experiment_id)
    tags = {**lineage_tags(cfg.data.dir, cfg.data.unlabeled_dir), **_prefect_tags(), JOB_TAG: job.id}
    parent = mlflow.start_run(experiment_id=experiment_id, run_name=f"pretrain-finetune {flow_run.name}",
                              tags=tags, description=_describe(cfg, tags))
    try:
        ctx = RunContext(experiment_id, parent.info.run_id, tags, record_data)
        with engine_logs():
            return _run(cfg, paths, ctx, no_cache, started)
    except (MlflowException, requests.exceptions.RequestException) as exc:
        with contextlib.suppress(Exception):
            mlflow.end_run("FAILED")
        return Failed(message=tracking_failure(exc))
    except (DataError, ValueError) as exc:
        mlflow.end_run("FAILED")
        return Failed(message=str(exc))
    except BaseException:
        with contextlib.suppress(Exception):
            mlflow.end_run("FAILED")
        raise


@contextlib.contextmanager
def engine_logs() -> Iterator[None]:
    """The engine's epoch, progress and result lines (logger ``pipeline_tasks``) in the flow run's
    log however the run started: the CLI, a served deployment or a worker. Setting this up in
    the CLI alone left deployment and worker runs without them."""
    logger = logging.getLogger("pipeline_tasks")
    level, handler = logger.level, None
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        handler = APILogHandler()
        logger.addHandler(handler)
    try:
        yield
    finally:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)


def _run(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext, no_cache: bool, started: float) -> Any:
    """The flow inside its MLflow run: the gate, then training and registration, then the
    summary; the aliases move last, and the summary is published again once they have."""
    mlflow.log_params(cfg.flat())
    validated = validate_data_task(cfg, paths, ctx)
    if isinstance(validated, str):
        mlflow.end_run("FAILED")
        return Failed(message=validated)
    tags = {**ctx.tags, **lineage_tags(cfg.data.dir, cfg.data.unlabeled_dir)}  # recorded after the gate
    ctx = RunContext(ctx.experiment_id, ctx.parent_run_id, tags)
    md5 = tags["data_dvc_md5"]
    _tag_flow_run(f"data:{md5[:12] if md5 != 'untracked' else validated.data_digest[:12]}")
    summary, registered, source = _train_and_register(validated, cfg, paths, ctx, no_cache)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    mlflow.log_metric("pipeline_seconds", summary["seconds"])
    urls = links(ctx, registered, source)
    publish(summary, urls, final=False)
    moved = move_aliases_task(registered, paths)  # last: aliases move only once all else succeeded
    summary.update(aliases=list(moved.aliases), gate=moved.reason)
    publish(summary, urls, final=True)
    text, answer_tags = first_screen(summary)
    describe_parent_run(text)
    _tag_flow_run(*answer_tags)
    mlflow.end_run("FINISHED")
    return summary


def _prefect_tags() -> dict[str, str]:
    """The flow run's ids, and its URL when a Prefect server (not the ephemeral API) runs it."""
    tags = {"prefect_flow_run_id": str(flow_run.id), "prefect_flow_run_name": str(flow_run.name)}
    if os.environ.get("PREFECT_API_URL") and flow_run.ui_url:
        tags["prefect_flow_run_url"] = str(flow_run.ui_url)
    return tags


def _describe(cfg: PipelineConfig, tags: dict[str, str]) -> str:
    where = f"[Prefect flow run]({tags['prefect_flow_run_url']})" if "prefect_flow_run_url" in tags else \
        f"Prefect flow run {tags['prefect_flow_run_name']}"
    return (f"{where}: {cfg.pretrain.method} pretraining ({cfg.pretrain.epochs} epochs) on {cfg.data.dir}, "
            f"{cfg.finetune.mode} fine-tuning with {cfg.finetune.label_fraction:.0%} of the training labels "
            f"against a scratch baseline; registers {cfg.register_.model_name}.")


def _tag_flow_run(*tags: str) -> None:
    """Add ``tags`` (the data version; the answer) to this flow run: the Prefect UI shows them
    beside the run's name and filters runs by them."""
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id).tags
        client.update_flow_run(flow_run.id, tags=[*current, *(t for t in tags if t not in current)])


def _train_and_register(validated: ValidationRecord, cfg: PipelineConfig, paths: ArtifactPaths,
                        ctx: RunContext, no_cache: bool) -> tuple[dict[str, Any], RegisterRecord, str | None]:
    """Everything after the gate, inside the flow's MLflow run; returns the run summary, the
    registration (aliases not moved yet) and, when the results came from the cache, the
    MLflow run that computed them."""
    ctx = RunContext(ctx.experiment_id, ctx.parent_run_id,
                     {**ctx.tags, "data_images": str(validated.n_images)})
    upstream: tuple[Any, ...] = (validated.data_digest,)
    weights = starting_weights(cfg)  # resolved once: a registered encoder is downloaded once
    results = {}
    for stage in COMPUTE_STAGES:
        results[stage] = run_cached_stage(stage, upstream, cfg, paths, ctx, no_cache,
                                    weights.sha256 if weights else "")
        upstream = (*upstream, results[stage].outputs)
    source = results["evaluate"].mlflow_run_id
    source = source if source != ctx.parent_run_id else None
    registered = register_task(cfg, paths, ctx, results["evaluate"])
    metrics = _log_on_parent(paths, registered, source)
    summary = {**model_rows(cfg, metrics), "start": results["start"].record.reason,
               "labels_used": metrics["labels_used"], "train_labels": metrics["train_labels"],
               "val_labels": metrics["val_labels"], "test_images": metrics["test_images"],
               "pretrain_images": results["pretrain"].record.n_images,
               "pretrain_steps": "{0.steps_trained} of {0.total_steps}".format(results["pretrain"].record),
               "devices": devices(results), "test_macro_f1": metrics["test_macro_f1"],
               "mlflow_run_id": ctx.parent_run_id, "model_name": registered.model_name,
               "model_version": registered.version, "aliases": list(registered.aliases),
               "gate": registered.reason, "tracking_uri": mlflow.get_tracking_uri(),
               "data_dvc_md5": ctx.tags["data_dvc_md5"]}
    return summary, registered, source


def _log_on_parent(paths: ArtifactPaths, registered: RegisterRecord, source: str | None) -> dict[str, Any]:
    """The headline numbers, the confusion matrix, the validation report and the model version
    on the flow's own run, cached or not; a cache hit names the run that computed them."""
    metrics: dict[str, Any] = json.loads(paths.metrics.read_text())
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_artifact(str(paths.metrics))
    mlflow.log_artifacts(str(paths.plots), "plots")
    mlflow.log_artifact(str(paths.validation / "report.json"), "validation")
    tags = {"registered_model": registered.model_name, "registered_version": registered.version,
            "registered_model_uri": registered.model_uri}
    base = mlflow_ui(mlflow.get_tracking_uri())
    if base:
        tags["registered_model_url"] = model_url(base, registered.model_name, registered.version)
    if source:
        tags["cached_from_run"] = source  # stages came from Prefect's cache: their runs are there
    mlflow.set_tags(tags)
    return metrics
