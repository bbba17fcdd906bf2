"""What a run shows in the Prefect UI (markdown artifacts) and the links between the tools.

Links are links only where the other tool is a server a browser can reach: an MLflow
tracking server (``MLFLOW_TRACKING_URI=http...``), a Prefect server (``PREFECT_API_URL``).
With the local defaults (sqlite, the ephemeral Prefect API) the ids are shown instead.
"""

from __future__ import annotations

from typing import Any


def mlflow_ui(tracking_uri: str) -> str | None:
    """The MLflow UI's base URL, or None when the store is not a server (sqlite, files)."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


# MLflow 3's UI opens its GenAI pages (Evaluations, Traces, Judges) unless the link asks for the
# model-training layout; every MLflow link pretrainflow writes does.
TRAINING_LAYOUT = "?workflowType=machine_learning"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_LAYOUT}"


def model_url(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{name}/versions/{version}{TRAINING_LAYOUT}"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    base = mlflow_ui(tracking_uri)
    return f"[{run_id}]({run_url(base, experiment_id, run_id)})" if base else f"`{run_id}`"


def model_link(tracking_uri: str, name: str, version: str) -> str:
    base = mlflow_ui(tracking_uri)
    text = f"{name} version {version}"
    return f"[{text}]({model_url(base, name, version)})" if base else f"`{text}`"


def _fmt(value: Any, key: str = "") -> str:
    """A value as a person reads it: accuracies to 4 decimals, seconds to whole seconds."""
    if key == "seconds" and isinstance(value, float | int):
        return f"{value:,.0f} s"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value)


COMPARED = (("scratch_pool_test_accuracy", "scratch + pool"),
            ("pretrained_test_accuracy", "pretrained without the pool"),
            ("scratch_test_accuracy", "scratch"), ("pixels_test_accuracy", "raw pixels"),
            ("encoder_test_accuracy", "the frozen encoder"))


def headline(summary: dict[str, Any]) -> str:
    """One sentence that answers "did it help": the model against its baselines, pretraining's
    lift with its p-value, the label budget (training and validation labels)."""
    against = ", ".join(f"{name} {summary[key]:.4f}" for key, name in COMPARED
                        if isinstance(summary.get(key), float | int))
    lift = summary.get("pretraining_lift_points")
    said = f"; pretraining lift {lift}" if lift else ""
    return (f"**This run's model: test accuracy {summary['test_accuracy']:.4f}** against "
            f"{against or 'no baseline'}{said}, with {summary['labels_used']} labels "
            f"({summary['train_labels']} training + {summary['val_labels']} validation), on "
            f"{summary['test_images']} test images.")


def summary_markdown(summary: dict[str, Any], links: dict[str, str]) -> str:
    """The ``run-summary`` artifact: the headline, the gate's decision, then every number
    rounded, with the MLflow run and model version as links when MLflow is a server."""
    lines = ["# pretrain-finetune", ""]
    lines += [headline(summary), ""]
    lines += [f"**Registry:** {links['model']}; aliases after this run: {_fmt(summary['aliases'])}. "
              f"Promotion gate: {summary['gate']}", "",
              f"**MLflow run:** {links['run']}" + (f" (results cached from run {links['source']})"
                                                  if links.get("source") else ""), "",
              "| field | value |", "|---|---|"]
    lines += [f"| {k} | {f'{v:+.2f}' if k.startswith('lift') and isinstance(v, float) else _fmt(v, k)} |"
              for k, v in summary.items() if k not in ("gate", "aliases")]
    return "\n".join(lines) + "\n"


def validation_markdown(report: dict[str, Any]) -> str:
    """The validation summary as the Prefect UI shows it: the verdict, then tables."""
    verdict = "passed" if report["success"] else "**FAILED**"
    lines = [f"# Data validation {verdict}", "",
             "| images | classes | skipped | width (px) | height (px) | formats | modes |",
             "|---|---|---|---|---|---|---|",
             f"| {report['n_images']} | {report['n_classes']} | {report['n_skipped']} | "
             f"{_span(report['width'])} | {_span(report['height'])} | {_counts(report['formats'])} | "
             f"{_counts(report['modes'])} |", "", "| class | images |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["images_per_class"].items()]
    pool = report.get("pool")
    if pool:
        lines += ["", "| unlabeled pool | images | kept | skipped | copies of labeled images removed |",
                  "|---|---|---|---|---|",
                  f"| {pool['dir']} | {pool['n_images']} | {pool['n_kept']} | {pool['n_skipped']} | "
                  f"{len(pool['removed_copies'])} |"]
    lines += ["", "| suite | check | threshold | observed | result |", "|---|---|---|---|---|"]
    lines += [f"| {e['suite']} | {e.get('check', e['expectation'])} | {_threshold(e.get('threshold'))} | "
              f"{_observed(e)} | {'ok' if e['success'] else '**FAILED**'} |" for e in report["expectations"]]
    for f in report["failures"]:
        lines += ["", f"**{f['expectation']}** on `{f['column'] or 'the class table'}` "
                      f"(observed {f['observed']}): {f['fix']}", ""]
        lines += [f"- `{o}`" for o in f["offending"]]
    litter = report.get("ignored_litter") or {}
    if litter.get("n"):
        lines += ["", f"Ignored {litter['n']} entries that operating systems leave (not images): "
                      + ", ".join(f"`{p}`" for p in litter["paths"])]
    return "\n".join(lines)


def _threshold(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if len(value) <= 8 else f"{len(value)} values"
    return f"{value:g}" if isinstance(value, float) else str(value)  # GX may hand back 5 as 5.0


FILE_CHECKS = ("refused_link", "bad_name", "decodes", "format", "width", "height", "label_conflict",
               "path_clash")


def _observed(check: dict[str, Any]) -> str:
    """Offending files for a file check ("0 files"), the value for a class check."""
    observed = check.get("observed")
    if check.get("column") in FILE_CHECKS:
        return f"{observed or 0} files"
    if check.get("column") in ("n_images", "imbalance", "n_distinct", "name_clash"):
        return f"{observed or 0} classes off"
    return _threshold(observed)


def _span(span: dict[str, int]) -> str:
    return f"{span['min']}-{span['max']}" if span else "-"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"
