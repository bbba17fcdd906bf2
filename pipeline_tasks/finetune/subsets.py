"""Which labels a run uses, and for how many steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline_tasks.config import FinetuneConfig

LABELS = "labels.npz"  # written beside the classifier by finetune_classifier


def stratified_subset(labels: torch.Tensor, seed: int, fraction: float | None = None,
                      per_class: int | None = None) -> torch.Tensor:
    """Sorted indices of a seeded, stratified subset: ``fraction`` of each class (at least one)
    or ``per_class`` of each (all when the class is smaller); everything when neither is given."""
    if fraction is None and per_class is None:
        return torch.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = [np.empty(0, dtype=np.int64)]
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten().numpy()
        n = max(1, round(len(idx) * fraction)) if fraction is not None else min(len(idx), per_class or 0)
        picked.append(rng.choice(idx, size=n, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def labeled_subset(labels: torch.Tensor, fraction: float, seed: int,
                   per_class: int | None = None) -> torch.Tensor:
    """Indices of a stratified ``fraction`` of ``labels``, at least one per class, or of
    ``per_class`` labels of each class when given."""
    if per_class is not None:
        return stratified_subset(labels, seed, per_class=per_class)
    return stratified_subset(labels, seed, fraction=fraction)


def require_every_class(labels: torch.Tensor, classes: Sequence[str]) -> None:
    """``ValueError`` naming, by name, each of ``classes`` (index = label) that ``labels`` (the
    labeled training subset, int64 ``[N]``) never holds: a class trained on 0 labels is never
    predicted, and nothing else would say so."""
    present = set(torch.unique(labels).tolist())
    missing = [name for i, name in enumerate(classes) if i not in present]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise ValueError(f"no training label of class(es) {names} in the labeled subset of the training "
                         "split: fine-tuning would never predict them. Rerun preprocess (it refuses a class "
                         "without training images) after adding different pictures of these classes")


def step_budget(n_labeled: int, cfg: FinetuneConfig) -> tuple[int, int]:
    """``(total optimisation steps, steps between validation checks)``."""
    per_epoch = math.ceil(n_labeled / cfg.batch_size)
    total = max(cfg.epochs * per_epoch, cfg.min_steps)
    return total, math.ceil(total / cfg.epochs)


def save_label_budget(path: str | Path, train: torch.Tensor, val: torch.Tensor) -> None:
    """The indices of the training and validation labels a run used (``labels.npz``), for the
    stages after fine-tuning: the pool stage and the reference points use the same labels."""
    np.savez(path, train=train.numpy(), val=val.numpy())


def load_label_budget(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as found:
        return torch.from_numpy(found["train"]), torch.from_numpy(found["val"])
