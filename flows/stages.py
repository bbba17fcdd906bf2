"""The six stages as tracked steps: each reads earlier stages' outputs from ``artifacts/``,
calls the framework-free code in ``pipeline_tasks``, and records an MLflow run.

The Prefect flow (``flows.pipeline``) and ``pretrainflow stage NAME`` (what ``dvc.yaml``
calls) both run these functions, so the two routes cannot drift apart.

Each function imports the libraries of its own stage (``# noqa: PLC0415``): a ``dvc repro``
stage is a process of its own, and ``validate`` then never imports torch nor ``pretrain``
Great Expectations (about 4 s less per stage process on a 2-core CPU).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from flows import graph
from flows.artifacts import ArtifactPaths, RunContext, final_classifier, require, require_validated
from flows.dvc import DvcError, record_data_version, tracks
from flows.tracking import Curves, lineage_tags, log_dataset, log_runtime, mlflow_log_metrics, stage_run
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.ssl import world

if TYPE_CHECKING:
    from flows.registry import RegisterRecord
    from pipeline_tasks.data.preprocess import PreprocessRecord
    from pipeline_tasks.data.validate import ValidationRecord
    from pipeline_tasks.evaluation.evaluate import EvaluateRecord
    from pipeline_tasks.finetune.pool import PoolRecord
    from pipeline_tasks.finetune.train import FinetuneRecord
    from pipeline_tasks.ssl.trainer import PretrainRecord

MANIFEST_CACHE_DIR = Path(".cache")


def manifest_cache(data_dir: str | Path) -> Path:
    """Per data folder, outside it and outside artifacts/ (which DVC clears before a stage)."""
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return MANIFEST_CACHE_DIR / f"manifest-{key}.csv"


def run_validate(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> ValidationRecord:
    """The gate, before anything touches or records the data: symlinks in a DVC-tracked folder
    are refused (``dvc add`` would replace them with copies), and with ``ctx.record_data`` the
    folders are recorded with ``dvc add`` only once the gate has opened."""
    from pipeline_tasks.data.validate import validate_data  # noqa: PLC0415

    pool = cfg.data.unlabeled_dir
    folders = [f for f in (cfg.data.dir, pool) if f]
    with stage_run("validate", ctx, cfg, cfg.section("validate")):
        try:
            record = validate_data(cfg.data.dir, cfg.validate_, paths.validation,
                                   manifest_cache(cfg.data.dir), pool,
                                   manifest_cache(pool) if pool else None,
                                   refuse_links=any(tracks(f) for f in folders))
        finally:
            if (paths.validation / "report.json").exists():
                mlflow.log_artifacts(str(paths.validation), "validation")
        if ctx.record_data:
            _record(folders)
        _log_validation(record, cfg, ctx)
        return record


def _record(folders: list[str]) -> None:
    """``dvc add`` the tracked folders, so the run points at a version ``dvc checkout`` restores."""
    try:
        for folder in folders:
            if tracks(folder):
                record_data_version(folder)
    except DvcError as exc:
        raise DataError(f"{exc}. The data passed the gate but could not be recorded: fix the DVC "
                        "repository (`dvc doctor`) and rerun") from exc


def _log_validation(record: ValidationRecord, cfg: PipelineConfig, ctx: RunContext) -> None:
    """Counts, the data version (read after recording) and the MLflow dataset input."""
    lineage = lineage_tags(cfg.data.dir, cfg.data.unlabeled_dir)
    versions = {k: v for k, v in lineage.items() if k.endswith("_dvc_md5")}
    mlflow.log_metrics({"n_images": record.n_images, "n_classes": record.n_classes,
                        "n_skipped": record.n_skipped, "n_pool": record.n_pool})
    mlflow.set_tags({"data_digest": record.data_digest, "data_images": str(record.n_images), **versions})
    md5 = versions["data_dvc_md5"]
    log_dataset(record.manifest_path, cfg.data.dir, md5 if md5 != "untracked" else record.data_digest[:32],
                ctx.parent_run_id)
    if ctx.parent_run_id:  # the data version on the flow's run too
        client = mlflow.MlflowClient()
        for key, value in {"data_images": str(record.n_images), **versions}.items():
            client.set_tag(ctx.parent_run_id, key, value)


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


def run_pretrain(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> PretrainRecord:
    """Pretrain, resumably (checkpoints under ``artifacts/checkpoints/pretrain``, outside the
    stage's DVC output, which DVC clears before a run), and register the encoder. Under
    ``torchrun`` every rank trains; only rank 0 talks to MLflow."""
    from flows.registry import register_encoder  # noqa: PLC0415
    from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: PLC0415

    require_validated(paths)
    require(paths.preprocessed / "train_images.npy", "preprocess")
    train = partial(pretrain_encoder, paths.preprocessed, cfg.pretrain, paths.pretrain,
                    checkpoint_dir=paths.root / "checkpoints" / "pretrain", init_path=_init_weights(cfg))
    if not world.current().is_main:
        return train()
    with stage_run("pretrain", ctx, cfg, cfg.section("pretrain")):
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


def _init_weights(cfg: PipelineConfig) -> str | None:
    """``pretrain.init`` as a local file: a registered encoder is downloaded from MLflow, a
    ``torchvision:`` name is torch.hub's file for it (fetched only with ``pretrain.allow_download``;
    otherwise a missing file is a ``ValueError`` naming the file and its URL)."""
    from flows.registry import download_encoder  # noqa: PLC0415
    from pipeline_tasks.models.starts import resolve_weights  # noqa: PLC0415

    init = cfg.pretrain.init
    if init and init.startswith("models:/"):
        return str(download_encoder(init))
    path = resolve_weights(init, cfg.pretrain.encoder, cfg.pretrain.allow_download).path if init else None
    return None if path is None else str(path)


def run_finetune(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> FinetuneRecord:
    """The classifier (``finetune.mode``) and, with ``finetune.baseline``, the same network
    from scratch on the same labels and steps (``baseline.pt``) and, when pretraining started
    from ``pretrain.init``, fine-tuned from those weights directly (``init_baseline.pt``);
    ``summary.json`` records them all."""
    from pipeline_tasks.evaluation.plots import validation_curves  # noqa: PLC0415
    from pipeline_tasks.finetune.train import finetune_classifier  # noqa: PLC0415

    require_validated(paths)
    classes = tuple(json.loads(require(paths.preprocessed / "classes.json", "preprocess").read_text()))
    encoder = require(paths.pretrain / "encoder.pt", "pretrain")
    params = {**cfg.section("finetune"), "pretrain_init": cfg.pretrain.init}
    with stage_run("finetune", ctx, cfg, params):
        curves = Curves()
        record = finetune_classifier(paths.preprocessed, encoder, classes, cfg.finetune,
                                     paths.finetune, curves.logger(f"{cfg.finetune.mode} (this model)"))
        records = {"classifier": record.to_dict()}
        baselines = {"scratch": (paths.finetune / "baseline.pt", None),
                     "init": (paths.finetune / "init_baseline.pt", _init_weights(cfg))}
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


def run_pool(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> PoolRecord | None:
    """The pool stage: from the fine-tuned classifier, learn from the unlabeled images
    (``pool.method``); ``pool/classifier.pt`` is then the run's model. ``pool.method: none``
    writes only ``summary.json`` and the fine-tuned classifier stays the model."""
    from pipeline_tasks.finetune.pool import learn_from_pool  # noqa: PLC0415
    from pipeline_tasks.finetune.subsets import LABELS  # noqa: PLC0415

    require_validated(paths)
    classifier = require(paths.finetune / "classifier.pt", "finetune")
    paths.pool.mkdir(parents=True, exist_ok=True)
    (paths.pool / "classifier.pt").unlink(missing_ok=True)
    if cfg.pool.method == "none":
        (paths.pool / "summary.json").write_text(json.dumps({"method": "none"}) + "\n")
        return None
    with stage_run("pool", ctx, cfg, cfg.section("pool")):
        record = learn_from_pool(paths.preprocessed, classifier, cfg.pool, paths.finetune / LABELS,
                                 paths.pool / "classifier.pt", cfg.finetune.augment, mlflow_log_metrics)
        mlflow.log_metrics({"pool_start_val_accuracy": record.start_val_accuracy,
                            "pool_best_val_accuracy": record.best_val_accuracy,
                            "pool_images": record.pool_images})
        log_runtime(record.runtime)
        (paths.pool / "summary.json").write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        return record


def run_evaluate(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> EvaluateRecord:
    from pipeline_tasks.evaluation.evaluate import evaluate_classifier  # noqa: PLC0415
    from pipeline_tasks.finetune.subsets import LABELS  # noqa: PLC0415

    require_validated(paths)
    classifier = final_classifier(paths)
    trained = json.loads(require(paths.finetune / "summary.json", "finetune").read_text())["classifier"]
    candidates = {"scratch": paths.finetune / "baseline.pt", "init": paths.finetune / "init_baseline.pt",
                  "pretrained": paths.finetune / "classifier.pt"}
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


def run_register(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext,
                 apply: bool = True) -> RegisterRecord:
    """Register the classifier and decide on the aliases; with ``apply`` (``pretrainflow
    stage register``, the last DVC stage) move them now. The flow passes ``apply=False`` and
    moves them only after every other step has succeeded."""
    from flows.registry import apply_decision, register_model  # noqa: PLC0415

    report = require_validated(paths)
    classifier = final_classifier(paths)
    metrics = json.loads(require(paths.metrics, "evaluate").read_text())
    split = json.loads(require(paths.preprocessed / "splits.json", "preprocess").read_text())
    data_version = ctx.tags.get("data_dvc_md5", "untracked")
    if data_version == "untracked":  # a folder outside DVC: the content digest of the gate
        data_version = f"sha256:{report['data_digest']}"
    if ctx.tags.get("pool_dvc_md5"):
        data_version += f" + pool {ctx.tags['pool_dvc_md5']}"
    active = mlflow.active_run()
    on_parent = bool(ctx.parent_run_id) and active is not None and active.info.run_id == ctx.parent_run_id
    if on_parent:  # in the flow: the model goes on its run, which holds the metrics (the version's source)
        record = register_model(classifier, metrics, split, cfg, str(ctx.parent_run_id), data_version, paths)
    with stage_run("register", ctx, cfg, cfg.section("register")) as run_id:
        if not on_parent:
            record = register_model(classifier, metrics, split, cfg, run_id, data_version, paths)
        if apply:
            record = apply_decision(record)
        mlflow.set_tags({"gate_reason": record.reason[:5000]})
        paths.registered.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        return record


RUNNERS: dict[str, Callable[[PipelineConfig, ArtifactPaths, RunContext], Any]] = {
    name: globals()[f"run_{name}"] for name in graph.NAMES}
