"""The run's summary: the answer first (this run's model against its baselines, each lift with
its p-value), then the label budget, the registry and the devices; published as the Prefect
``run-summary`` artifact with links to MLflow, and the message when MLflow fails mid-run."""

from __future__ import annotations

import re
from typing import Any

import mlflow
from prefect.artifacts import create_markdown_artifact

from flows.orchestration.reports import headline, model_link, run_link, summary_markdown
from flows.registry.register import RegisterRecord
from flows.stages.artifacts import RunContext
from pipeline_tasks.config import PipelineConfig

# Each lift by what it measures: the one thing the model has that its baseline lacks.
LIFTS = {"pretraining_lift": "pretraining: against scratch + the same pool stage",
         "pool_lift": "the pool stage: against the model before it",
         "pipeline_lift": "the whole pipeline: against scratch on the labels alone",
         "lift_over_init": "self-supervised pretraining: against the starting weights fine-tuned (and pooled "
                           "when the model was)"}
BASELINES = ("scratch_pool_test_accuracy", "pretrained_test_accuracy", "scratch_test_accuracy",
             "init_pool_test_accuracy", "init_test_accuracy", "pixels_test_accuracy", "encoder_test_accuracy")


def lift_text(points: float, p_value: float, what: str) -> str:
    """``+5.71 points (pretraining: against ...; McNemar p 2e-05)``."""
    return f"{points:+.2f} points ({what}; McNemar p {p_value:.2g})"


def model_rows(cfg: PipelineConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """The answer first: this run's model against its baselines, then each lift named for the
    one thing it adds, with its McNemar p-value, and how far the frozen encoder beats pixels."""
    pooled = cfg.pool.method != "none" and "pretrained_test_accuracy" in metrics
    mode = cfg.finetune.mode
    model = "scratch" if mode == "scratch" else f"{mode} fine-tune of the pretrained encoder"
    rows: dict[str, Any] = {"model": f"{model}{f' + pool ({cfg.pool.method})' if pooled else ''}",
                            "test_accuracy": metrics["test_accuracy"]}
    rows.update({key: metrics[key] for key in BASELINES if key in metrics})
    for lift, what in LIFTS.items():
        if f"{lift}_points" in metrics:
            rows[f"{lift}_points"] = lift_text(metrics[f"{lift}_points"], metrics[f"{lift}_p_value"], what)
    if "encoder_over_pixels_points" in metrics:
        rows["encoder_over_pixels_points"] = f"{metrics['encoder_over_pixels_points']:+.2f}"
    return rows


def devices(results: dict[str, Any]) -> str:
    """Where each training stage ran (``results``: stage -> its cached result, whose record has
    ``runtime``): ``pretrain cpu (CPU (2 cores)) fp32; finetune ...``."""
    found = []
    for stage in ("pretrain", "finetune", "pool", "evaluate"):
        rt = getattr(results[stage].record, "runtime", None) or {}
        if rt:
            found.append(f"{stage} {rt['device']} ({rt['device_name']}) {rt['precision']}")
    return "; ".join(found)


def links(ctx: RunContext, registered: RegisterRecord, source: str | None) -> dict[str, str]:
    uri = mlflow.get_tracking_uri()
    links = {"run": run_link(uri, ctx.experiment_id, ctx.parent_run_id or ""),
             "model": model_link(uri, registered.model_name, registered.version)}
    if source:
        links["source"] = run_link(uri, ctx.experiment_id, source)
    return links


def publish(summary: dict[str, Any], links: dict[str, str], final: bool) -> None:
    """The ``run-summary`` artifact (Prefect shows a key's latest version): before the aliases
    move it says they are pending; after, it shows them as the registry holds them."""
    shown = summary if final else {**summary, "aliases": "pending: they move when the run finishes"}
    create_markdown_artifact(key="run-summary", markdown=summary_markdown(shown, links),
                             description="pretrain-finetune results")


def first_screen(summary: dict[str, Any]) -> tuple[str, list[str]]:
    """What the first screen of each UI says once the aliases have moved: the MLflow parent run's
    description (the headline and the gate's reason, in markdown) and the Prefect flow run's
    tags (``test_accuracy 0.9610``, ``pretraining lift +5.71``, ``champion v2`` or ``not promoted
    v2``), so neither needs a click to answer "did pretraining help, and why is this the champion"."""
    text = f"{headline(summary)}\n\n**Promotion gate:** {summary['gate']}"
    version = f"v{summary['model_version']}"
    tags = [f"test_accuracy {summary['test_accuracy']:.4f}",
            "champion " + version if "champion" in summary["aliases"] else "not promoted " + version]
    if "pretraining_lift_points" in summary:
        tags.insert(1, f"pretraining lift {str(summary['pretraining_lift_points']).split(' ')[0]}")
    return text, tags


def describe_parent_run(text: str) -> None:
    """Put ``text`` above the active MLflow run's description (the note the run page opens with)."""
    run = mlflow.active_run()
    if run is not None:
        before = mlflow.get_run(run.info.run_id).data.tags.get("mlflow.note.content", "")
        mlflow.set_tag("mlflow.note.content", f"{text}\n\n{before}".strip())


def tracking_failure(exc: Exception) -> str:
    uri = mlflow.get_tracking_uri()
    cause = re.search(r"\[Errno \d+\][^\"')]*", str(exc))  # e.g. "[Errno 111] Connection refused"
    reason = cause.group(0) if cause else str(exc).splitlines()[0][:200]
    return (f"MLflow tracking store {uri} (MLFLOW_TRACKING_URI) failed during the run, after retries: "
            f"{reason}. No alias moved. Start the server again (`pretrainflow ui`) and rerun: finished "
            "stages come from the cache.")
