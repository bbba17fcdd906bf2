"""The stage graph, written once: each stage's name, Prefect task, params, code, inputs and
outputs. Everything that names stages derives from ``STAGES``: the flow's order and cache keys
(``flows.orchestration.pipeline``), the stage runners (``flows.stages``), the lineage each stage
records and checks (``flows.stages.artifacts``), the MLflow stage descriptions
(``flows.tracking.runs``), the CLI's choices (``flows.cli.main``) and ``dvc.yaml``, which
``render_dvc_yaml`` writes (``python -m flows.orchestration.graph > dvc.yaml``; a test keeps
them equal).

A stage's code is the import closure of its runner, ``flows.stages.<name>``: what computes its
outputs and decides which inputs it reads. Modules that only record (MLflow runs, DVC, the
encoder's registration) or orchestrate are not code of any stage: changing a log line must not
retrain an encoder.

This module imports only the standard library (and ``pipeline_tasks.codehash``, which does too),
so the CLI can read it before anything heavy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache

from pipeline_tasks import codehash

ARTIFACTS = "artifacts"
PACKAGES = ("flows", "pipeline_tasks")
# Packages and modules that record or orchestrate; no stage's output depends on their code.
RECORDING = ("flows.cli", "flows.orchestration", "flows.tracking", "flows.registry.encoders")
LINEAGE = "lineage.json"  # each stage's record of what it was computed from (flows.stages.artifacts)


@dataclass(frozen=True)
class Stage:
    """One stage. Paths are relative to the project root; ``outs`` under ``artifacts/``."""

    name: str
    task: str  # the Prefect task's name (kebab-case)
    description: str  # the MLflow stage run's description
    params: tuple[str, ...]  # params.yaml sections, or section.key, the stage reads
    deps: tuple[str, ...]  # inputs: earlier stages' outputs, ${data.dir}
    outs: tuple[str, ...]  # outputs DVC caches
    # Files whose sha256 prove a cached result is still on disk, byte for byte (those a stage
    # writes only sometimes, like a baseline, are checked when present).
    proof: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # DVC metrics (not cached by DVC)
    plots: tuple[str, ...] = ()
    untracked_outs: tuple[str, ...] = ()  # outputs DVC records but does not cache
    home: str = ""  # the folder its lineage file goes in (default: its first output)

    @property
    def runner(self) -> str:
        """The module of its runner, ``run_<name>``: the root of its code."""
        return f"flows.stages.{self.name}"

    @property
    def lineage(self) -> str | None:
        """Its lineage file, or None for a stage that writes no folder (register)."""
        home = self.home or (self.outs[0] if self.outs else "")
        return f"{home}/{LINEAGE}" if home else None


def _a(*paths: str) -> tuple[str, ...]:
    """Paths under ``artifacts/``."""
    return tuple(f"{ARTIFACTS}/{p}" for p in paths)


_CACHE_FILES = _a(*(f"preprocessed/{split}_{kind}.npy" for split in ("train", "val", "test")
                    for kind in ("images", "labels")))
STAGES: tuple[Stage, ...] = (
    Stage("validate", "validate-data",
          "Great Expectations gate on the labeled images and the unlabeled pool",
          ("data", "validate"), ("${data.dir}",), _a("validation")),
    Stage("preprocess", "preprocess-data", "splits by content and the uint8 image cache",
          ("data", "preprocess"), ("${data.dir}", *_a("validation")), _a("preprocessed"),
          proof=(*_CACHE_FILES, *_a("preprocessed/pool_images.npy", "preprocessed/classes.json",
                                    "preprocessed/splits.json", "preprocessed/seen_images.txt",
                                    "preprocessed/train_images_large.npy",
                                    "preprocessed/pool_images_large.npy", f"preprocessed/{LINEAGE}"))),
    Stage("start", "choose-start", "where pretraining starts: scratch or ImageNet, decided on validation",
          ("pretrain.start", "pretrain.init", "pretrain.encoder", "finetune.label_fraction",
           "finetune.labels_per_class", "finetune.val_per_class", "finetune.seed"),
          _a("preprocessed"), _a("start"), proof=_a("start/start.json", f"start/{LINEAGE}")),
    # pretraining and fine-tuning read the start's decision alone (start.json), not its probe's
    # numbers (probe.json): a new label budget that keeps the decision retrains nothing
    Stage("pretrain", "pretrain-encoder", "self-supervised pretraining of the encoder (labels unused)",
          ("pretrain",), _a("preprocessed", "start/start.json"), _a("pretrain"),
          proof=_a("pretrain/encoder.pt", f"pretrain/{LINEAGE}")),
    Stage("finetune", "finetune-classifier",
          "fine-tuning on the labeled subset, and the from-scratch baseline",
          ("finetune", "pretrain.init"), _a("preprocessed", "start/start.json", "pretrain"), _a("finetune"),
          proof=_a(*(f"finetune/{f}" for f in ("classifier.pt", "baseline.pt", "init_baseline.pt",
                                               "summary.json", "labels.npz", LINEAGE)))),
    Stage("pool", "learn-from-pool",
          "semi-supervised learning on the unlabeled pool, from the fine-tuned classifier and from "
          "the scratch baseline",
          ("pool", "finetune.augment"), _a("preprocessed", "finetune"), _a("pool"),
          proof=_a(*(f"pool/{f}" for f in ("classifier.pt", "baseline.pt", "init_baseline.pt", "summary.json",
                                           LINEAGE)))),
    Stage("evaluate", "evaluate-classifier",
          "scores on the held-out test split, against the baselines and the reference points",
          ("evaluate",), _a("preprocessed", "pretrain", "finetune", "pool"), (),
          proof=_a("metrics.json", "plots/confusion_matrix.png", "plots/predictions.csv", f"plots/{LINEAGE}"),
          metrics=_a("metrics.json"),
          plots=_a("plots/predictions.csv", *(f"plots/{name}.png" for name in (
              "confusion_matrix", "per_class_accuracy", "baselines", "reliability", "worst_misclassified"))),
          home=f"{ARTIFACTS}/plots"),
    Stage("register", "register-model", "model registry: new version and the promotion gate's decision",
          ("register",), _a("finetune", "pool", "preprocessed", "metrics.json"), (),
          untracked_outs=_a("registered.json")),
)
BY_NAME = {s.name: s for s in STAGES}
NAMES = tuple(BY_NAME)
# Which stage writes each output: a stage's inputs by name.
_WRITER = {out: s.name for s in STAGES for out in (*s.outs, *s.metrics)}


def upstream(stage: str) -> tuple[str, ...]:
    """The stages whose outputs (or a file inside them) ``stage`` reads, in the graph's order."""
    found = {writer for d in BY_NAME[stage].deps for out, writer in _WRITER.items()
             if d == out or d.startswith(f"{out}/")}
    return tuple(n for n in NAMES if n in found)


def ancestors(stage: str) -> tuple[str, ...]:
    """Every stage ``stage`` depends on, directly or through others, in the graph's order."""
    found = set(upstream(stage))
    for name in upstream(stage):
        found.update(ancestors(name))
    return tuple(n for n in NAMES if n in found)


@cache
def code_files(stage: str) -> tuple[str, ...]:
    """The files a stage runs, relative to the project root, sorted: the import closure of its
    runner, without the modules that only record or orchestrate (``RECORDING``)."""
    recording = frozenset(m for m in codehash.module_files(PACKAGES) if m.startswith(RECORDING))
    return tuple(codehash.closure([BY_NAME[stage].runner], PACKAGES, excluded=recording))


def code_digest(stage: str) -> str:
    """sha256 (16 hex) over the stage's code files: editing any of them reruns the stage."""
    return codehash.digest(code_files(stage))[:16]


def render_dvc_yaml() -> str:
    """``dvc.yaml`` for ``STAGES``: every stage as ``pretrainflow stage NAME``, its code files and
    inputs as deps, its params, outputs, metrics and plots."""
    lines = [
        "# Generated from flows/orchestration/graph.py by `python -m flows.orchestration.graph > dvc.yaml`;",
        "# edit the graph, not this file (tests/unit/test_graph.py fails while they differ).",
        "# `dvc repro` rebuilds every artifact from params.yaml; the same stages run as Prefect tasks",
        "# in `pretrainflow run`.",
        "# With an unlabeled pool (data.unlabeled_dir), add its folder to the validate stage's deps,",
        "# e.g. `- unlabeled`, so that `dvc repro` notices when the pool changes.",
        "stages:",
    ]
    for s in STAGES:
        lines += [f"  {s.name}:", f"    cmd: pretrainflow stage {s.name}", "    deps:"]
        lines += [f"      - {d}" for d in (*s.deps, *code_files(s.name))]
        lines += ["    params:", *(f"      - {p}" for p in s.params)]
        if s.outs or s.untracked_outs:
            lines += ["    outs:", *(f"      - {o}" for o in s.outs)]
            lines += [f"      - {o}:\n          cache: false" for o in s.untracked_outs]
        if s.metrics:
            lines += ["    metrics:", *(f"      - {m}:\n          cache: false" for m in s.metrics)]
        if s.plots:
            lines.append("    plots:")
            for p in s.plots:
                lines.append(f"      - {p}:\n          template: confusion\n          x: actual\n"
                             "          y: predicted" if p.endswith(".csv") else f"      - {p}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_dvc_yaml())
