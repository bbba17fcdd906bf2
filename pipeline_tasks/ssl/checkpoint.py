"""Resumable pretraining: what a checkpoint holds, which run it belongs to, and when to resume.

A checkpoint holds the model (encoder, heads, target network), optimiser, scheduler and
gradient scaler (saved and loaded by Lightning Fabric), the epoch, the step, the epoch's sample
order, the order generator and every rank's augmentation and global RNG state, so each rank
continues its own random stream.

It is keyed by a fingerprint of everything that changes the result: the settings, the code of
the training modules, the content of the images trained on, the starting weights and the world
size: a checkpoint keyed by less (settings and image counts) would resume a finished run after a
code fix or new pixels, train 0 steps and write the old encoder again. A run that finishes retires
its checkpoint, so a finished run is never "resumed"; ``--no-cache`` and ``dvc repro`` retrain.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric

from pipeline_tasks import codehash
from pipeline_tasks.config import PretrainConfig
from pipeline_tasks.hashing import file_sha256

LAST = "last.pt"
# Settings that do not change what a run computes: a checkpoint stays valid when they change.
NOT_IN_FINGERPRINT = {"device", "resume", "log_every_steps", "knn_every_epochs", "checkpoint_every_steps",
                      "allow_download"}
# The modules whose code decides what pretraining computes (their imports are followed).
TRAINING_CODE = ("pipeline_tasks.ssl.trainer",)


class ResumeError(RuntimeError):
    """The ranks of a torchrun job do not see the same checkpoint."""


def fingerprint(cfg: PretrainConfig, data_digest: str, init: str | Path | None,
                resolved: dict[str, Any] | None = None) -> str:
    """sha256 of the settings that change the result, the training code, the images' content
    digest, the starting weights' bytes (``init``: a local file, a ``torchvision:`` name already
    resolved to torch.hub's file) and what the run resolved from them (``resolved``: the
    encoder's spec, with ``small_stem: auto`` decided and the input normalisation, the views'
    size and the world size: each rank's augmentation stream is saved per rank)."""
    settings = {k: v for k, v in cfg.model_dump().items() if k not in NOT_IN_FINGERPRINT}
    blob = json.dumps({"settings": settings, "code": codehash.code_digest(*TRAINING_CODE),
                       "data": data_digest, "init": file_sha256(init) if init else None,
                       "resolved": resolved}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save(fabric: Fabric, directory: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (objects with a ``state_dict`` are saved through it) as ``directory/last.pt``;
    called on every rank, written by rank 0, atomically."""
    fabric.save(directory / LAST, state)


def retire(fabric: Fabric, directory: Path | None) -> None:
    """Remove the checkpoint of a run that finished: it must never be resumed."""
    if directory is not None and fabric.is_global_zero:
        (directory / LAST).unlink(missing_ok=True)
    fabric.barrier()


def _peek(path: Path, expected: str) -> tuple[dict[str, Any] | None, str]:
    if not path.is_file():
        return None, "no checkpoint"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is a fresh start, said so
        return None, f"{path} does not load ({type(exc).__name__}: {exc}); starting fresh"
    if state.get("fingerprint") != expected:
        return None, (f"{path} is from other settings, code, images, starting weights or another number of "
                      "processes (world size); starting fresh (it is replaced at the first checkpoint)")
    return state, f"resuming from {path}: epoch {state['epoch'] + 1}, step {state['step']}"


def load(fabric: Fabric, directory: Path, expected: str) -> tuple[dict[str, Any] | None, str]:
    """``(state, why)``: the last checkpoint of this run, read on every rank, or ``None`` and
    why not. Every rank must see the checkpoint rank 0 resumes from: a rank that sees another
    one (or none, on a disk the ranks do not share) is a ``ResumeError``, never a silent
    restart of some ranks."""
    state, why = _peek(directory / LAST, expected)
    step = torch.tensor([-1 if state is None else int(state["step"])], device=fabric.device)
    steps = fabric.all_gather(step)
    assert isinstance(steps, torch.Tensor)
    steps = steps.view(-1).tolist()
    if steps[0] >= 0 and any(s != steps[0] for s in steps):
        bad = [r for r, s in enumerate(steps) if s != steps[0]]
        raise ResumeError(
            f"rank 0 resumes from {directory / LAST} at step {steps[0]}, but rank(s) {bad} see "
            f"{['no checkpoint' if steps[r] < 0 else f'step {steps[r]}' for r in bad]}: every rank must "
            f"read the same checkpoint folder. Put {directory} on storage that all nodes mount, or set "
            "pretrain.resume: never")
    if steps[0] < 0:
        return None, why if fabric.is_global_zero else "no checkpoint"
    return state, why
