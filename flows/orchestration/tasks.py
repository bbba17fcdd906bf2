"""The flow's tasks: the gate, one cached task per compute stage (keyed by ``cache_key``), and
the registry's two service tasks, retried with backoff. Tasks pass small frozen records (paths,
numbers), never tensors: Prefect hashes task inputs for its cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from flows.orchestration import graph
from flows.orchestration.reports import validation_markdown
from flows.registry.register import RegisterRecord, apply_decision
from flows.stages.artifacts import ArtifactPaths, RunContext
from flows.stages.runners import run_stage
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.hashing import file_sha256

# cfg and ctx are excluded from the key: cfg enters through `key` (only the params the stage
# reads) and ctx holds the MLflow parent run id, which is new every run.
CACHE_POLICY = (INPUTS - "cfg" - "ctx") + TASK_SOURCE
# The stages between the gate and the registry, in the graph's order: cached Prefect tasks.
COMPUTE_STAGES = tuple(n for n in graph.NAMES if n not in ("validate", "register"))


@dataclass(frozen=True)
class StageResult:
    stage: str
    record: Any
    outputs: tuple[tuple[str, str], ...]  # (path, sha256)
    mlflow_run_id: str | None = None  # the flow's MLflow run that computed it (a cache hit's is older)


def _intact(result: StageResult) -> bool:
    """A cached result is usable only while its files are on disk, byte for byte."""
    return all(Path(p).is_file() and file_sha256(Path(p)) == digest for p, digest in result.outputs)


@task(name=graph.BY_NAME["validate"].task)
def validate_data_task(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> Any:
    """Never cached: it reads every file (unchanged ones from the manifest cache), and its
    digest is the data version downstream."""
    report = paths.validation / "report.json"  # validate_data removes an earlier run's first
    try:
        return run_stage("validate", cfg, paths, ctx)
    except DataError as exc:
        return str(exc)  # a closed gate is an outcome, not a crash: the flow fails cleanly
    finally:
        if report.is_file():
            create_markdown_artifact(key="data-validation", markdown=validation_markdown(
                json.loads(report.read_text())), description="image manifest validation")


@task(cache_policy=CACHE_POLICY)
def stage_task(stage: str, key: str, upstream: tuple[Any, ...], cfg: PipelineConfig,
               paths: ArtifactPaths, ctx: RunContext) -> StageResult:
    """Deterministic compute: cached, never retried (a retry would compute the same failure)."""
    record = run_stage(stage, cfg, paths, ctx)
    files = [paths.root / Path(f).relative_to(graph.ARTIFACTS) for f in graph.BY_NAME[stage].proof]
    return StageResult(stage, record, tuple((str(f), file_sha256(f)) for f in files if f.is_file()),
                       ctx.parent_run_id)


# Tasks that only talk to the tracking server: retried with backoff, since a server that blinks
# is the likely failure; compute tasks are not.
SERVICE_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 20]}


@task(name=graph.BY_NAME["register"].task, **SERVICE_RETRIES)
def register_task(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext,
                  evaluated: StageResult) -> RegisterRecord:
    """Register and decide; the aliases move in `move-aliases`, after everything else."""
    return run_stage("register", cfg, paths, ctx, apply=False)


@task(name="move-aliases", **SERVICE_RETRIES)
def move_aliases_task(record: RegisterRecord, paths: ArtifactPaths) -> RegisterRecord:
    record = apply_decision(record)
    paths.registered.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return record


def cache_key(stage: str, cfg: PipelineConfig, init_sha256: str = "") -> str:
    """A stage's cache key: the params it reads (as dvc.yaml lists them), its code and, for the
    stages that read ``pretrain.init``, the starting weights' content (a name such as
    ``models:/pretrainflow-encoder/latest`` stays the same while the file it names changes)."""
    params = graph.BY_NAME[stage].params
    reads_init = any(p in ("pretrain", "pretrain.init") for p in params)
    return (f"{stage}:{cfg.section_digest(*params)}:{graph.code_digest(stage)}"
            f"{f':{init_sha256}' if reads_init and init_sha256 else ''}")


def run_cached_stage(stage: str, upstream: tuple[Any, ...], cfg: PipelineConfig, paths: ArtifactPaths,
               ctx: RunContext, no_cache: bool, init_sha256: str) -> StageResult:
    """One cached stage (``cache_key``); a result whose files changed on disk runs again."""
    key = cache_key(stage, cfg, init_sha256)
    name = graph.BY_NAME[stage].task
    run = stage_task.with_options(name=name, refresh_cache=no_cache)
    result = run(stage, key, upstream, cfg, paths, ctx)
    if not _intact(result):
        get_run_logger().info("%s: cached outputs changed on disk; running it again", stage)
        result = stage_task.with_options(name=name, refresh_cache=True)(
            stage, key, upstream, cfg, paths, ctx)
    return result
