"""Every stage run the same way, whoever starts it: the Prefect flow
(``flows.orchestration.pipeline``) and ``pretrainflow stage NAME`` (what ``dvc.yaml`` calls)
both call ``run_stage``, so the two routes cannot drift apart.

A stage's inputs must belong together before it starts (``artifacts.check_inputs``); its
lineage is forgotten while it runs and recorded once it has finished. Each runner lives in
``flows.stages.<name>`` and imports its stage's libraries inside the function: a ``dvc repro``
stage is a process of its own, so ``validate`` never imports torch, nor ``pretrain`` Great
Expectations.
"""

from __future__ import annotations

import importlib
from typing import Any

from flows.orchestration import graph
from flows.stages.artifacts import ArtifactPaths, RunContext, check_inputs, forget_lineage, record_lineage
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.ssl import world


def runner(stage: str) -> Any:
    """``run_<stage>`` of ``flows.stages.<stage>``."""
    return getattr(importlib.import_module(graph.BY_NAME[stage].runner), f"run_{stage}")


def run_stage(stage: str, cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext, **kwargs: Any) -> Any:
    """Check the inputs, run the stage, record its lineage (the gate's holds the data digest)."""
    inputs = check_inputs(paths, stage)
    main = world.current().is_main
    if main:
        forget_lineage(paths, stage)
    record = runner(stage)(cfg, paths, ctx, **kwargs)
    if main:
        record_lineage(paths, stage, cfg, inputs, _content(record))
    return record


def _content(record: Any) -> str:
    """What identifies a stage's outputs by their content, where a stage has such a thing: the
    gate's data digest, the start's decision ("" for the others: their recipe identifies them)."""
    return str(getattr(record, "data_digest", "") or getattr(record, "decision", ""))

