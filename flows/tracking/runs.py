"""MLflow tracking: where runs go, what every run is tagged with, one nested run per stage."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from flows.orchestration import graph
from flows.tracking.project import project_root
from pipeline_tasks.config import PipelineConfig

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# What the MLflow 3 UI reads to open an experiment on its training runs, not on a GenAI traces page.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
LogMetrics = Callable[[dict[str, float], int], None]
JOB_TAG = "pretrainflow.job"  # on every MLflow run a job starts: its lock's job id


class TrackingError(RuntimeError):
    """MLflow cannot be reached or used; the message says how to fix it."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db``; a relative sqlite path
    resolves against the project root, never the working directory (``predict`` run inside a
    class folder must not create ``mlflow.db`` there: the next validation would fail on it)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / uri.removeprefix('sqlite:///')}"
    return uri


def setup_tracking(experiment: str) -> str:
    """Point MLflow at the tracking store and experiment; returns the experiment id.

    An HTTP server is probed first so that a stopped server is one clear error, not a
    minute of retries followed by a traceback.
    """
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not answering /health "
                f"({exc}). Start it (`pretrainflow ui`), or unset MLFLOW_TRACKING_URI to use "
                f"{DEFAULT_TRACKING_URI}."
            ) from exc
    # no artifact-download progress bars in the flow's log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND[0]) is None:  # experiments made by older versions
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return str(found.experiment_id)
    location = None
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).parent == project_root():
        location = (project_root() / "mlartifacts").as_uri()  # beside mlflow.db, not in cwd/mlruns
    try:
        return str(mlflow.create_experiment(experiment, artifact_location=location,
                                            tags=dict([EXPERIMENT_KIND])))
    except MlflowException as exc:  # another run on this store created it since we looked
        found = mlflow.get_experiment_by_name(experiment)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return str(found.experiment_id)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def dvc_data_md5(data_dir: str | Path, dvc_file: str | Path | None = None) -> str:
    """The md5 that ``FOLDER.dvc`` (``dvc add``'s file beside the folder) records for
    ``data_dir``, or ``untracked``."""
    path = Path(dvc_file) if dvc_file else Path(f"{Path(data_dir)}.dvc")
    if not path.is_file():
        return "untracked"
    try:
        outs = (yaml.safe_load(path.read_text()) or {}).get("outs", [])
    except yaml.YAMLError:
        return "untracked"
    tracked = (path.parent / outs[0]["path"]).resolve() if outs else None
    if tracked != Path(data_dir).resolve():
        return "untracked"
    return str(outs[0].get("md5", "untracked"))


def lineage_tags(data_dir: str | Path, pool_dir: str | Path | None = None) -> dict[str, str]:
    tags = {
        "git_commit": git_commit(),
        "data_dvc_md5": dvc_data_md5(data_dir),
        "data_dir": str(Path(data_dir).resolve()),
    }
    if pool_dir:
        tags.update(pool_dvc_md5=dvc_data_md5(pool_dir), pool_dir=str(Path(pool_dir).resolve()))
    return tags


def log_dataset(manifest_path: str | Path, data_dir: str | Path, digest: str,
                parent_run_id: str | None = None) -> None:
    """Log the images as an MLflow dataset input of the active run, and of ``parent_run_id``
    when given (built once): digest = the DVC md5 of data/ (or the content digest when the
    folder is not DVC-tracked), source = the folder."""
    import pandas as pd  # noqa: PLC0415
    from mlflow.entities import DatasetInput, InputTag  # noqa: PLC0415

    manifest = pd.read_csv(manifest_path, usecols=["path", "label", "sha256"], dtype=str)
    with warnings.catch_warnings():  # MLflow registers the local source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(manifest, source=str(Path(data_dir).resolve()), name="images",
                                          digest=digest, targets="label")
    mlflow.log_input(dataset, context="training")
    if parent_run_id:
        mlflow.MlflowClient().log_inputs(parent_run_id, [DatasetInput(
            dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])])


def mlflow_log_metrics(metrics: dict[str, float], step: int) -> None:
    """The ``log_metrics`` callable handed to the training loops (called once per epoch)."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


class Curves:
    """Each model's validation accuracy per step, kept as the training loops log their metrics,
    for the one chart that shows them side by side (``plots.validation_curves``)."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[int, float]]] = {}

    def logger(self, name: str, prefix: str = "") -> Callable[[dict[str, float], int], None]:
        """A ``log_metrics`` callable: logs to MLflow (names prefixed) and keeps ``val_accuracy``."""
        def log(metrics: dict[str, float], step: int) -> None:
            mlflow_log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step)
            if "val_accuracy" in metrics:
                self.points.setdefault(name, []).append((step, float(metrics["val_accuracy"])))
        return log


def log_runtime(runtime: dict[str, str]) -> None:
    """The device, its name and the precision a stage ran on, as tags of its run."""
    mlflow.set_tags({k: v for k, v in runtime.items() if v})


def run_name(stage: str, cfg: PipelineConfig) -> str:
    """A stage run named for what it did, as the MLflow runs table shows it."""
    ft = cfg.finetune
    labels = (f"{ft.labels_per_class} labels a class" if ft.labels_per_class
              else f"{ft.label_fraction:.0%} labels")
    names = {"validate": f"validate {Path(cfg.data.dir).name}",
             "preprocess": f"preprocess {cfg.data.image_size} px",
             "pretrain": f"pretrain {cfg.pretrain.method} {cfg.pretrain.epochs} ep",
             "finetune": f"finetune {ft.mode} {labels}",
             "pool": f"pool {cfg.pool.method} {cfg.pool.steps} steps",
             "evaluate": "evaluate on the test split", "register": f"register {cfg.register_.model_name}"}
    return names.get(stage, stage)


@contextlib.contextmanager
def stage_run(stage: str, ctx: Any, cfg: PipelineConfig, params: dict[str, Any]) -> Iterator[str]:
    """An MLflow run for one stage (``ctx``: the ``RunContext``), named for what it does,
    nested under the flow's run when there is one, tagged ``pretrainflow.stage``."""
    with mlflow.start_run(
        experiment_id=ctx.experiment_id, run_name=run_name(stage, cfg), nested=ctx.parent_run_id is not None,
        parent_run_id=ctx.parent_run_id, description=graph.BY_NAME[stage].description,
        tags={"pretrainflow.stage": stage, **ctx.tags},
    ) as run:
        if params:
            mlflow.log_params(params)
        yield run.info.run_id


def fail_runs_of(job: str, experiment_id: str) -> int:
    """End as FAILED the runs still RUNNING that job ``job`` started (a job that crashed: killed,
    out of memory, a signal); returns how many."""
    client = mlflow.MlflowClient()
    query = f"tags.`{JOB_TAG}` = '{job}' and attributes.status = 'RUNNING'"
    found = client.search_runs([experiment_id], query)
    for run in found:
        client.set_terminated(run.info.run_id, "FAILED")
    return len(found)
