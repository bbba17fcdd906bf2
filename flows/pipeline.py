"""The Prefect flow ``pretrain-finetune``: the six stages as tasks, one MLflow parent run.

Tasks pass small frozen records (paths, numbers), never tensors. Every cached task is keyed
on its own params sections, the pipeline code, and its upstream result, which carries the
sha256 of the upstream outputs (and, through validate, the data digest): changing
``finetune.lr`` reruns finetune and what follows, nothing before it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.runtime import flow_run
from prefect.states import Failed

import pipeline_tasks
from flows.registry import RegisterRecord, apply_decision
from flows.stages import RUNNERS, ArtifactPaths, RunContext, run_register
from flows.tracking import lineage_tags, setup_tracking
from pipeline_tasks.config import PipelineConfig, load_config
from pipeline_tasks.validate import DataError, ValidationRecord

# cfg and ctx are excluded from the key: cfg enters through `key` (only the sections the stage
# reads) and ctx holds the MLflow parent run id, which is new every run.
CACHE_POLICY = (INPUTS - "cfg" - "ctx") + TASK_SOURCE

# (params sections read, files whose sha256 proves the outputs are still the cached ones;
# those that a stage writes only sometimes, like the scratch baseline, are checked when present)
STAGE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "preprocess": (("data", "preprocess"), (*(f"preprocessed/{s}_{kind}.npy" for s in ("train", "val", "test")
                                              for kind in ("images", "labels")),
                                            "preprocessed/pool_images.npy", "preprocessed/classes.json",
                                            "preprocessed/splits.json")),
    "pretrain": (("pretrain",), ("pretrain/encoder.pt",)),
    "finetune": (("finetune",), ("finetune/classifier.pt", "finetune/baseline.pt",
                                 "finetune/init_baseline.pt", "finetune/summary.json")),
    "evaluate": (("evaluate",), ("metrics.json", "plots/confusion_matrix.png")),
}

TASK_NAMES = {"preprocess": "preprocess-data", "pretrain": "pretrain-encoder",
              "finetune": "finetune-classifier", "evaluate": "evaluate-classifier"}


@dataclass(frozen=True)
class StageResult:
    stage: str
    record: Any
    outputs: tuple[tuple[str, str], ...]  # (path, sha256)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _intact(result: StageResult) -> bool:
    """A cached result is usable only while its files are on disk, byte for byte."""
    return all(Path(p).is_file() and _sha256(Path(p)) == digest for p, digest in result.outputs)


def code_version() -> str:
    """Hash of the stage code, so editing pipeline_tasks/ invalidates the cache."""
    h = hashlib.sha256()
    for src in sorted(Path(pipeline_tasks.__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


@task(name="validate-data")
def validate_data_task(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> Any:
    """Never cached: it reads every file (unchanged ones from the manifest cache), and its
    digest is the data version downstream."""
    try:
        return RUNNERS["validate"](cfg, paths, ctx)
    except DataError as exc:
        return str(exc)  # a closed gate is an outcome, not a crash: the flow fails cleanly
    finally:
        report = paths.validation / "report.json"
        if report.is_file():
            create_markdown_artifact(key="data-validation", markdown=validation_markdown(
                json.loads(report.read_text())), description="image manifest validation")


def validation_markdown(report: dict[str, Any]) -> str:
    """The validation summary as the Prefect UI shows it."""
    verdict = "passed" if report["success"] else "**FAILED**"
    lines = [f"# Data validation {verdict}", "",
             f"{report['n_images']} images, {report['n_classes']} classes, "
             f"{report['n_skipped']} skipped; width {report['width']}, height {report['height']}; "
             f"formats {report['formats']}; modes {report['modes']}", "",
             "| class | images |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["images_per_class"].items()]
    lines += ["", "| suite | expectation | column | result |", "|---|---|---|---|"]
    lines += [f"| {e['suite']} | {e['expectation']} | {e['column']} | {'ok' if e['success'] else 'FAILED'} |"
              for e in report["expectations"]]
    for f in report["failures"]:
        lines += ["", f"**{f['expectation']}** on `{f['column'] or 'the class table'}`: {f['fix']}", ""]
        lines += [f"- `{o}`" for o in f["offending"]]
    return "\n".join(lines)


@task(cache_policy=CACHE_POLICY)
def stage_task(stage: str, key: str, upstream: tuple[Any, ...], cfg: PipelineConfig,
               paths: ArtifactPaths, ctx: RunContext) -> StageResult:
    record = RUNNERS[stage](cfg, paths, ctx)
    files = [paths.root / f for f in STAGE_KEYS[stage][1]]
    return StageResult(stage, record, tuple((str(f), _sha256(f)) for f in files if f.is_file()))


@task(name="register-model")
def register_task(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext,
                  evaluated: StageResult) -> RegisterRecord:
    """Register and decide; the aliases move in `move-aliases`, after everything else."""
    return run_register(cfg, paths, ctx, apply=False)


@task(name="move-aliases")
def move_aliases_task(record: RegisterRecord, paths: ArtifactPaths) -> RegisterRecord:
    record = apply_decision(record)
    paths.registered.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return record


def _run_stage(stage: str, upstream: tuple[Any, ...], cfg: PipelineConfig, paths: ArtifactPaths,
               ctx: RunContext, code: str, no_cache: bool) -> StageResult:
    key = f"{stage}:{cfg.section_digest(*STAGE_KEYS[stage][0])}:{code}"
    name = TASK_NAMES[stage]
    run = stage_task.with_options(name=name, refresh_cache=no_cache)
    result = run(stage, key, upstream, cfg, paths, ctx)
    if not _intact(result):
        get_run_logger().info("%s: cached outputs changed on disk; running it again", stage)
        result = stage_task.with_options(name=name, refresh_cache=True)(
            stage, key, upstream, cfg, paths, ctx)
    return result


@flow(name="pretrain-finetune", log_prints=True)
def pretrain_finetune(
    params: str = "params.yaml", overrides: list[str] | None = None,
    data_dir: str | None = None, no_cache: bool = False, artifacts: str = "artifacts",
) -> Any:
    """Validate -> preprocess -> pretrain (SimCLR) -> finetune -> evaluate -> register."""
    started = time.perf_counter()
    sets = list(overrides or []) + ([f"data.dir={json.dumps(data_dir)}"] if data_dir else [])
    cfg = load_config(params, sets)
    paths = ArtifactPaths(Path(artifacts).resolve())
    experiment_id = setup_tracking(cfg.tracking.experiment)
    tags = {**lineage_tags(cfg.data.dir, cfg.data.unlabeled_dir), "prefect_flow_run_id": str(flow_run.id),
            "prefect_flow_run_name": str(flow_run.name)}
    parent = mlflow.start_run(experiment_id=experiment_id, run_name=f"pretrain-finetune {flow_run.name}",
                              tags=tags)
    try:
        mlflow.log_params(cfg.flat())
        ctx = RunContext(experiment_id, parent.info.run_id, tags)
        validated = validate_data_task(cfg, paths, ctx)
        if isinstance(validated, str):
            mlflow.end_run("FAILED")
            return Failed(message=validated)
        summary, registered = _train_and_register(validated, cfg, paths, ctx, no_cache)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        mlflow.log_metric("pipeline_seconds", summary["seconds"])
        create_markdown_artifact(key="run-summary", markdown=_summary_markdown(summary),
                                 description="pretrain-finetune results")
        # Last: the aliases move only once everything else has succeeded.
        summary["aliases"] = list(move_aliases_task(registered, paths).aliases)
        mlflow.end_run("FINISHED")
        return summary
    except BaseException:
        mlflow.end_run("FAILED")
        raise


def _train_and_register(validated: ValidationRecord, cfg: PipelineConfig, paths: ArtifactPaths,
                        ctx: RunContext, no_cache: bool) -> tuple[dict[str, Any], RegisterRecord]:
    """Everything after the gate, inside the flow's MLflow run; returns the run summary and
    the registration, whose aliases have not moved yet."""
    ctx = RunContext(ctx.experiment_id, ctx.parent_run_id,
                     {**ctx.tags, "data_images": str(validated.n_images)})
    code, upstream = code_version(), (validated.data_digest,)
    results = {}
    for stage in ("preprocess", "pretrain", "finetune", "evaluate"):
        results[stage] = _run_stage(stage, upstream, cfg, paths, ctx, code, no_cache)
        upstream = (*upstream, results[stage].outputs)
    registered = register_task(cfg, paths, ctx, results["evaluate"])
    metrics = json.loads(paths.metrics.read_text())
    summary = {
        "mode": cfg.finetune.mode if cfg.finetune.mode == "scratch" else f"{cfg.finetune.mode} (pretrained)",
        "test_accuracy": metrics["test_accuracy"],
        "scratch_test_accuracy": metrics.get("scratch_test_accuracy", "not trained (finetune.baseline)"),
        "lift_points": metrics.get("lift_points", "n/a"),
        **{k: metrics[k] for k in ("init_test_accuracy", "lift_over_init_points") if k in metrics},
        "labels_used": metrics["labels_used"], "train_labels": metrics["train_labels"],
        "val_labels": metrics["val_labels"], "test_images": metrics["test_images"],
        "pretrain_images": results["pretrain"].record.n_images,
        "test_macro_f1": metrics["test_macro_f1"],
        "mlflow_run_id": ctx.parent_run_id, "model_name": registered.model_name,
        "model_version": registered.version, "aliases": list(registered.aliases), "gate": registered.reason,
        "tracking_uri": mlflow.get_tracking_uri(), "data_dvc_md5": ctx.tags["data_dvc_md5"],
    }
    return summary, registered


def _summary_markdown(summary: dict[str, Any]) -> str:
    head = ""
    if isinstance(summary.get("lift_points"), float | int):
        head = (f"**Pretrained {summary['test_accuracy']:.4f} vs scratch "
                f"{summary['scratch_test_accuracy']:.4f}: {summary['lift_points']:+.2f} points** with "
                f"{summary['labels_used']} labels ({summary['train_labels']} training + "
                f"{summary['val_labels']} validation), on {summary['test_images']} test images.\n\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    return f"# pretrain-finetune\n\n{head}| field | value |\n|---|---|\n{rows}\n"
