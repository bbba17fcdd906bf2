"""Handlers behind ``pretrainflow`` subcommands; each returns an exit status."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli.errors import UserError, print_summary
from flows.stages.artifacts import ArtifactPaths, RunContext
from flows.stages.validate import manifest_cache
from flows.tracking.dvc import (
    DvcError,
    commit_stage_outputs,
    in_dvc_repo,
    tracks,
    untracked_pool_warning,
)
from flows.tracking.runs import JOB_TAG, TrackingError, fail_runs_of, lineage_tags, setup_tracking
from pipeline_tasks.config import ConfigError, PipelineConfig, load_config
from pipeline_tasks.data.datasets import UNLABELED, write_builtin
from pipeline_tasks.data.decode import REFUSED, REFUSED_FIX
from pipeline_tasks.data.errors import DataError, DatasetError
from pipeline_tasks.data.idx import find_idx_pairs, import_idx
from pipeline_tasks.data.importers import IMAGE_SUFFIXES, import_folder, import_unlabeled
from pipeline_tasks.data.listing import list_images, list_pool
from pipeline_tasks.ssl import world

if TYPE_CHECKING:
    import pandas as pd

INIT_STAGES = ("pretrain", "finetune")  # the stages that read pretrain.init


def _config(args: argparse.Namespace, data_dir: str | None = None) -> PipelineConfig:
    sets = list(args.overrides) + ([f"data.dir={json.dumps(data_dir)}"] if data_dir else [])
    try:
        return load_config(args.params, sets)
    except ConfigError as exc:
        raise UserError(str(exc), code=2) from exc


def _preflight(cfg: PipelineConfig, needs_init: bool = True) -> str:
    """Cheap checks before Prefect starts: standard weights by name (cached, or allowed to be
    fetched; when the stages to run read them, ``needs_init``), the data folders and the
    tracking store. Under torchrun only rank 0 talks to MLflow (the others would race to
    create the experiment)."""
    main = world.current().is_main
    init = cfg.pretrain.init if needs_init else None
    if init:  # hub imports torch and torchvision, which a stage such as validate never needs
        from pipeline_tasks.models.starts import check_init  # noqa: PLC0415

        try:
            check_init(init, cfg.pretrain.allow_download, cfg.pretrain.encoder)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    try:
        list_images(cfg.data.dir)
        if cfg.data.unlabeled_dir:
            list_pool(cfg.data.unlabeled_dir)
            warning = untracked_pool_warning(cfg.data.unlabeled_dir)
            if warning and main:
                print(warning, file=sys.stderr)
        return setup_tracking(cfg.tracking.experiment) if main else ""
    except (DataError, TrackingError) as exc:
        raise UserError(str(exc)) from exc


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args, args.data_dir)
    _preflight(cfg)
    folders = [f for f in (cfg.data.dir, cfg.data.unlabeled_dir) if f]
    tracked = all(tracks(f) for f in folders)
    from flows.orchestration.pipeline import pretrain_finetune  # noqa: PLC0415 - imports prefect

    # The flow records the tracked folders with `dvc add` after the gate, never before it.
    try:
        state = pretrain_finetune(params=args.params, overrides=args.overrides, data_dir=args.data_dir,
                                  no_cache=args.no_cache, record_data=any(tracks(f) for f in folders),
                                  return_state=True)
    except RuntimeError as exc:  # Prefect's API did not answer before the flow could start
        if "Prefect API" not in str(exc) and "PREFECT_API_URL" not in str(exc):
            raise
        raise UserError(f"{str(exc).splitlines()[0]} Check PREFECT_API_URL (unset: a temporary API on this "
                        "machine, which PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS waits for)") from exc
    if state.is_failed():
        raise UserError(state.message or "the flow failed; see the log above")
    summary = state.result()
    print_summary(summary)
    if tracked and in_dvc_repo() and _as_dvc_repro_runs(args, cfg):
        try:
            commit_stage_outputs()
            print("DVC: stage outputs recorded in dvc.lock (`dvc status` is clean)")
        except DvcError as exc:
            print(f"DVC: outputs not recorded ({exc})", file=sys.stderr)
    return 0


def _as_dvc_repro_runs(args: argparse.Namespace, cfg: PipelineConfig) -> bool:
    """True when this run read exactly what ``dvc repro`` reads: params.yaml as it is, no
    ``--set``, ``--preset`` or ``--data-dir`` that changes it. Only then may its outputs be
    recorded in dvc.lock (otherwise dvc.lock would name data and params the outputs do not
    come from)."""
    return args.params == "params.yaml" and cfg == load_config("params.yaml")


def cmd_stage(args: argparse.Namespace) -> int:
    """One stage under the project's lock (rank 0 holds it for a torchrun job)."""
    from flows.orchestration.lock import ProjectBusy, project_lock  # noqa: PLC0415
    from flows.stages.runners import run_stage  # noqa: PLC0415

    cfg = _config(args)
    experiment_id = _preflight(cfg, needs_init=args.name in INIT_STAGES)
    paths = ArtifactPaths()
    try:
        with project_lock(paths.root, f"pretrainflow stage {args.name}") if world.current().is_main \
                else contextlib.nullcontext() as job:
            if job is not None and job.crashed:
                fail_runs_of(job.crashed, experiment_id)
            tags = {**lineage_tags(cfg.data.dir, cfg.data.unlabeled_dir), "runner": "pretrainflow stage",
                    **({JOB_TAG: job.id} if job is not None else {})}
            record = run_stage(args.name, cfg, paths, RunContext(experiment_id, None, tags))
    except (DataError, ValueError, ProjectBusy) as exc:
        raise UserError(str(exc)) from exc
    print(f"{args.name}: {record}")
    return 0


def _import(args: argparse.Namespace) -> dict[str, int]:
    out = Path(args.out)
    if args.data_command == "builtin":
        return write_builtin(args.name, out, args.limit_per_class, args.labeled_per_class,
                             Path(args.unlabeled_out))
    if args.data_command in ("import-folder", "import-unlabeled"):
        summary = (import_folder(Path(args.path), out, args.limit_per_class)
                   if args.data_command == "import-folder" else import_unlabeled(Path(args.path), out))
        if summary.litter:
            print(f"ignored {len(summary.litter)} entries operating systems leave, not images "
                  f"({', '.join(summary.litter[:5])}{', ...' if len(summary.litter) > 5 else ''})")
        if summary.skipped or summary.refused_symlinks:
            print(f"left out {len(summary.skipped)} non-image files and "
                  f"{len(summary.refused_symlinks)} symlinks (never followed)")
        if summary.refused_formats:
            print(f"left out {len(summary.refused_formats)} HEIC/HEIF images, which cannot be read "
                  f"({', '.join(summary.refused_formats[:5])}); {REFUSED_FIX}")
        return summary.counts
    files = [Path(f) for f in args.files]
    if len(files) == 1 and files[0].is_dir():
        pairs = find_idx_pairs(files[0])
    elif len(files) % 2 == 0:
        pairs = list(zip(files[::2], files[1::2], strict=True))
    else:
        raise UserError("import-idx takes IMAGES LABELS pairs, or one folder of idx files", code=2)
    names = args.class_names.split(",") if args.class_names else None
    return import_idx(pairs, out, args.limit_per_class, names, args.labeled_per_class,
                      Path(args.unlabeled_out)).counts


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "suggest-labels":
        return cmd_suggest(args)
    try:
        counts = _import(args)
    except DatasetError as exc:
        raise UserError(str(exc)) from exc
    pool = counts.pop(UNLABELED, None)
    written = [] if args.data_command == "import-unlabeled" else [args.out]
    if counts:
        print(f"wrote {sum(counts.values())} labeled images in {len(counts)} classes to {args.out}/")
    if pool is not None:
        pool_dir = args.out if args.data_command == "import-unlabeled" else args.unlabeled_out
        written.append(pool_dir)
        print(f"wrote {pool} unlabeled images to {pool_dir}/; pretrain on them with "
              f"`--set data.unlabeled_dir={pool_dir}` (or data.unlabeled_dir in params.yaml)")
    tracked = [folder for folder in written if tracks(folder)]
    if tracked:  # the gate comes first: `run` records them with dvc add once they pass it
        print(f"DVC: {', '.join(tracked)} not recorded yet: `pretrainflow run` validates the images and then "
              f"records them with `dvc add` ({', '.join(f'{f}.dvc' for f in tracked)})")
    return 0


def _recipe(cfg: PipelineConfig) -> tuple[int, str, str]:
    """``(image_size, resize, where they come from)``: the preprocessed cache's recipe (what the
    encoder was trained on) when there is one, else params.yaml's data section."""
    from pipeline_tasks.data.cache import recipe  # noqa: PLC0415 - imports torch

    pre = ArtifactPaths().preprocessed
    if (pre / "splits.json").is_file():
        found = recipe(pre)
        return int(found["image_size"]), str(found["resize"]), str(pre / "splits.json")
    return cfg.data.image_size, cfg.data.resize, "params.yaml's data section"


def _labeled(cfg: PipelineConfig) -> pd.DataFrame | None:
    """The labeled images' manifest (every split; hashed once, then read from the gate's cache),
    so that suggest-labels never suggests a copy of one; None without a data folder."""
    from pipeline_tasks.data.manifest import build_manifest  # noqa: PLC0415

    if not Path(cfg.data.dir).is_dir():
        return None
    manifest = build_manifest(cfg.data.dir, manifest_cache(cfg.data.dir))
    return manifest[manifest["decodes"].astype(bool)]


def cmd_suggest(args: argparse.Namespace) -> int:
    from pipeline_tasks.finetune.suggest import check_paths, suggest_labels  # noqa: PLC0415 - torch
    from pipeline_tasks.runtime import resolve_runtime  # noqa: PLC0415

    cfg = _config(args)
    pool = args.pool or cfg.data.unlabeled_dir
    if not pool:
        raise UserError("no pool to pick from: pass --pool DIR or set data.unlabeled_dir", code=2)
    try:
        check_paths(args.encoder, pool, args.out)
        size, resize, source = _recipe(cfg)
        runtime = resolve_runtime(cfg.evaluate.device, cfg.evaluate.precision, "evaluate")
        rec = suggest_labels(pool, args.encoder, args.n, args.out, size, resize, args.seed, runtime.device,
                             cfg.evaluate.batch_size, runtime.dtype, _labeled(cfg), manifest_cache(pool))
    except (DataError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(f"embedded {rec.n_embedded} images of {pool}/ with {args.encoder} ({size} px, {resize}: {source})")
    if rec.left_out:
        print(f"left out {len(rec.left_out)} files of the pool: {'; '.join(rec.left_out[:3])}"
              + (" ..." if len(rec.left_out) > 3 else ""))
    print(f"wrote {rec.out_dir}/: {rec.n_suggested} images to label (copies; {pool}/ is unchanged), "
          f"{Path(rec.csv_path).name} (rank, pool path, cluster, cluster size, distance to centre) and "
          f"{Path(rec.sheet_path).name}")
    print(f"next: move each image in {rec.out_dir}/ into {cfg.data.dir}/<class>/ (its class folder), "
          "then `pretrainflow run`")
    return 0


def _image_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | set(REFUSED))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder; pass image files or folders to predict")
    if not files:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {' '.join(paths)}")
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict every image file under ``args.paths`` in batches (``flows.registry.predict``); exit 1 when
    any file could not be predicted (each is named on stderr and has an ``error`` in the CSV)."""
    import mlflow  # noqa: PLC0415

    from flows.registry.predict import predict_to_csv  # noqa: PLC0415

    files = _image_files(args.paths)
    try:
        setup_tracking(os.environ.get("MLFLOW_EXPERIMENT_NAME", "pretrainflow"))
        model = mlflow.pyfunc.load_model(args.model_uri)
    except (TrackingError, mlflow.exceptions.MlflowException) as exc:
        hint = ("Run `pretrainflow run` first, or pass --model-uri (a version that the promotion gate "
                "kept from champion is still models:/NAME@challenger; its gate_reason tag says why).")
        raise UserError(f"cannot load model {args.model_uri}: {str(exc).splitlines()[0]}. {hint}") from exc
    if args.output:
        with open(args.output, "w", newline="") as out:
            counts = predict_to_csv(model, files, out)
        print(f"wrote {counts.rows} rows to {args.output}: {counts.rows - counts.bad} predictions, "
              f"{counts.bad} files with an error")
    else:
        counts = predict_to_csv(model, files, sys.stdout)
    if counts.bad:
        raise UserError(f"{counts.bad} of {counts.rows} files could not be predicted (listed above, and "
                        "in the error column); the others were")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _config(args)  # fail now on bad params, not at the first scheduled run
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    from flows.orchestration.deploy import serve  # noqa: PLC0415

    if args.timezone:
        try:
            ZoneInfo(args.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise UserError(f"--timezone {args.timezone!r}: not an IANA timezone name; use one like "
                            "UTC or Europe/Paris", code=2) from exc
    serve(args.params, list(args.overrides), args.cron, args.timezone)
    return 0
