"""Checkpoints that survive a kill: written to a temporary file, flushed, then renamed over the
last one, so ``last.pt`` is always a whole checkpoint; loaded with ``weights_only=True``.

A checkpoint holds everything a run needs to continue where it stopped: model (encoder, heads,
target network), optimiser, scheduler, epoch, step, the epoch's sample order and the RNG
states. It also holds a fingerprint of the run's settings and data; a checkpoint of another
run is never resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline_tasks.storage import save_atomic

LAST = "last.pt"


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    path = directory / LAST
    save_atomic(state, path)
    return path


def load_checkpoint(directory: Path, fingerprint: str) -> tuple[dict[str, Any] | None, str]:
    """``(state, why)``: the last checkpoint when it belongs to this run, else ``None`` and why."""
    path = directory / LAST
    if not path.is_file():
        return None, "no checkpoint"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is a fresh start, said so
        return None, f"{path} does not load ({type(exc).__name__}: {exc}); starting fresh"
    if state.get("fingerprint") != fingerprint:
        return None, f"{path} is from other settings or data; starting fresh"
    return state, f"resuming from {path}: epoch {state['epoch'] + 1}, step {state['step']}"
