"""Fine-tuning on the labeled training split, and the from-scratch baseline it must beat.

Three modes, one training loop:

- ``full``: the pretrained encoder and a new linear head, all trained; the encoder at
  ``lr * encoder_lr_scale`` so a few labels refine the features instead of overwriting them.
- ``linear``: the pretrained encoder frozen; its features are computed once (no augmentation)
  and a linear head is trained on them (a linear probe).
- ``scratch``: the same architecture from random weights, every layer at ``lr``: the baseline.

Budgets count optimisation steps, not epochs: 35 labeled images at batch 64 are one step an
epoch, and 30 steps leave a network from scratch far from converged (0.50 test accuracy on
mnist-5k at 1% labels against 0.75 after 300 steps). So a run takes
``max(epochs * steps_per_epoch, min_steps)`` steps with a cosine learning rate, is evaluated on
the validation subset ``epochs`` times, and keeps the best evaluation (model selection).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import nn

from pipeline_tasks.config import FinetuneConfig
from pipeline_tasks.data.batches import BatchSource, Rows
from pipeline_tasks.data.cache import load_split_labels, open_images, recipe, view_source
from pipeline_tasks.finetune.subsets import (
    LABELS,
    labeled_subset,
    require_every_class,
    save_label_budget,
    step_budget,
    stratified_subset,
)
from pipeline_tasks.finetune.views import FINETUNE_AUGMENT
from pipeline_tasks.models.classifier import save_classifier
from pipeline_tasks.models.encoders import Classifier, Encoder
from pipeline_tasks.models.inference import embed, predict_logits, to_float
from pipeline_tasks.models.starts import ResolvedWeights
from pipeline_tasks.models.weights import load_encoder, load_init
from pipeline_tasks.progress import Progress
from pipeline_tasks.runtime import Runtime, resolve_runtime
from pipeline_tasks.ssl import distributed
from pipeline_tasks.ssl.views import ViewAugment

log = logging.getLogger(__name__)
LogMetrics = Callable[[dict[str, float], int], None]

@dataclass(frozen=True)
class FinetuneRecord:
    classifier_path: str
    mode: str  # full | linear | scratch
    n_labeled: int  # training labels used
    n_val_labels: int  # validation labels used for model selection
    steps: int
    best_val_accuracy: float
    best_step: int
    runtime: dict[str, str] = field(default_factory=dict)  # device, device_name, precision

    @property
    def labels_used(self) -> int:
        """Every label that shaped the model: training plus model-selection labels."""
        return self.n_labeled + self.n_val_labels

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels_used": self.labels_used}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
              on_features: bool) -> float:
    if len(x) == 0:
        return float("nan")
    with torch.no_grad():  # the model is under Fabric: its forward applies the precision
        logits = model.eval()(x) if on_features else predict_logits(model, x, device)
    return float((logits.argmax(1).cpu() == y.cpu()).float().mean())


@dataclass
class _Fit:
    """What the loop hands back: the best evaluation's weights, score and step."""

    state: dict[str, torch.Tensor]
    accuracy: float
    step: int


def _inputs(x: torch.Tensor, augment: ViewAugment | None, generator: torch.Generator,
            on_features: bool) -> torch.Tensor:
    """A training batch as the model takes it: features as they are, images augmented (or only
    scaled; the encoder makes them channels-last)."""
    if on_features:
        return x
    return augment(x, generator) if augment else to_float(x)


def _fit(model: nn.Module, param_groups: list[dict[str, Any]], data: tuple[Any, ...],
         cfg: FinetuneConfig, fabric: Fabric, augment: ViewAugment | None,
         log_metrics: LogMetrics, on_features: bool = False) -> _Fit:
    """The step loop shared by every mode, under ``fabric`` (its device and precision).
    ``data`` = (x, y, val_x, val_y): uint8 images, or with ``on_features`` precomputed
    features for a linear head."""
    x, y, val_x, val_y = data
    device = fabric.device
    total, every = step_budget(len(x), cfg)
    progress = Progress(total, min(cfg.batch_size, len(x)), "finetune")
    model, optimizer = fabric.setup(model, torch.optim.AdamW(param_groups, lr=cfg.lr,
                                                              weight_decay=cfg.weight_decay))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    generator = torch.Generator(device=x.device).manual_seed(cfg.seed)
    best = _Fit(copy.deepcopy(model.state_dict()), -1.0, 0)
    batch, order = min(cfg.batch_size, len(x)), torch.empty(0, dtype=torch.long)
    running, since = torch.zeros((), device=device), 0
    for step in range(1, total + 1):
        if len(order) < batch:  # a fresh permutation each epoch; no ragged last batch
            order = torch.randperm(len(x), device=x.device, generator=generator)
        idx, order = order[:batch], order[batch:]
        model.train()
        loss = nn.functional.cross_entropy(model(_inputs(x[idx], augment, generator, on_features)).float(),
                                           y[idx])
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        optimizer.step()
        scheduler.step()
        running, since = running + loss.detach(), since + 1  # no host sync until a check
        if step % every == 0 or step == total:
            acc = _accuracy(model, val_x, val_y, device, on_features)
            log_metrics({"finetune_loss": float(running) / since, "val_accuracy": acc,
                         "lr": float(scheduler.get_last_lr()[-1])}, step)
            running, since = torch.zeros((), device=device), 0
            progress.update(step)
            if not acc <= best.accuracy:  # also true for NaN (no val split): keep the latest
                best = _Fit(copy.deepcopy(model.state_dict()), acc, step)
    model.load_state_dict(best.state)
    return best


def _linear_probe(encoder: Encoder, n_classes: int, data: tuple[Any, ...],
                  cfg: FinetuneConfig, fabric: Fabric, runtime: Runtime, log_metrics: LogMetrics) -> tuple[
                      Classifier, _Fit]:
    """Features once, standardised; a linear head on them, folded back into one Classifier."""
    x, y, val_x, val_y = data
    device = fabric.device
    encoder = encoder.to(device)
    feats = embed(encoder, x, device, normalize=False, dtype=runtime.dtype)
    val_feats = embed(encoder, val_x, device, normalize=False, dtype=runtime.dtype)
    mean, std = feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6)
    head = nn.Linear(encoder.feature_dim, n_classes).to(device)
    fit = _fit(head, [{"params": head.parameters()}],
               ((feats - mean) / std, y, (val_feats - mean) / std, val_y), cfg, fabric, None, log_metrics,
               on_features=True)
    model = Classifier(encoder, n_classes).to(device)
    with torch.no_grad():  # head(f) on standardised f == (W / std) f + (b - W mean / std)
        model.head.weight.copy_(head.weight / std)
        model.head.bias.copy_(head.bias - (head.weight / std) @ mean)
    return model, fit


def starting_encoder(encoder_path: str | Path, mode: str,
                     init_path: str | Path | ResolvedWeights | None) -> Encoder:
    """The pretrained encoder; for ``scratch`` the same architecture with random weights; for
    ``init`` the starting weights ``init_path`` (``pretrain.init``: a file, or a name resolved
    offline by ``models.starts``) without pretraining."""
    encoder = load_encoder(encoder_path)
    if mode in ("scratch", "init"):
        encoder = Encoder(encoder.spec)
    if mode == "init":
        if init_path is None:
            raise ValueError("fine-tuning mode 'init' needs the starting weights (pretrain.init)")
        load_init(encoder, init_path)
    return encoder


def _augment(preprocessed_dir: str | Path, mode: str, cfg: FinetuneConfig) -> ViewAugment | None:
    """The training views (``cfg.augment``) made ``image_size`` px; none for a linear probe,
    whose features are computed once, or with ``augment: none``."""
    augment = None if mode == "linear" else FINETUNE_AUGMENT.get(cfg.augment)
    return None if augment is None else augment.replace(out_size=int(recipe(preprocessed_dir)["image_size"]))


def _labeled_images(preprocessed_dir: str | Path, subset: torch.Tensor, augment: ViewAugment | None,
                    device: torch.device) -> BatchSource:
    """The labeled images, streamed from the memory map (on the device whole when they fit):
    with an ``augment``, the rows of ``view_source`` that its ``image_size`` views are cut from
    (the ``cache_size`` images when preprocess wrote them); without, the ``image_size`` images."""
    pick = open_images if augment is None else view_source
    return BatchSource([pick(preprocessed_dir, "train")], device, rows=subset.numpy())


def _train_network(encoder: Encoder, n_classes: int, mode: str, data: tuple[Any, ...],
                   cfg: FinetuneConfig, fabric: Fabric, log_metrics: LogMetrics,
                   augment: ViewAugment | None) -> tuple[Classifier, _Fit]:
    """Encoder and head trained together (``data``'s images through ``augment``); a pretrained
    (or ``init``) encoder at ``lr * encoder_lr_scale``, a scratch one at the head's ``lr``."""
    model = Classifier(encoder, n_classes).to(fabric.device)
    scale = cfg.encoder_lr_scale if mode in ("full", "init") else 1.0
    groups: list[dict[str, Any]] = [{"params": model.encoder.parameters(), "lr": cfg.lr * scale},
                                    {"params": model.head.parameters()}]
    return model, _fit(model, groups, data, cfg, fabric, augment, log_metrics)


def finetune_classifier(
    preprocessed_dir: str | Path, encoder_path: str | Path, classes: tuple[str, ...],
    cfg: FinetuneConfig, out_dir: str | Path, log_metrics: LogMetrics = lambda metrics, step: None,
    mode: str | None = None, out_name: str = "classifier.pt",
    init_path: str | Path | ResolvedWeights | None = None,
) -> FinetuneRecord:
    """Train a classifier on ``cfg.label_fraction`` of the training labels (or
    ``cfg.labels_per_class`` of each class), selected on
    ``cfg.val_per_class`` validation labels per class. ``mode`` (default ``cfg.mode``):
    ``scratch`` builds the encoder of ``encoder_path`` with random weights; ``init`` with the
    starting weights ``init_path`` (``pretrain.init``, without self-supervised pretraining),
    trained like ``full``. Writes ``out_dir/out_name``: ``{"spec", "classes", "state_dict",
    "preprocess"}``. ``ValueError`` naming the classes the labeled subset holds no label of."""
    mode = mode or cfg.mode
    torch.manual_seed(cfg.seed)
    runtime = resolve_runtime(cfg.device, cfg.precision, "finetune")
    fabric, device = distributed.single_device(runtime), runtime.device
    train_y = torch.from_numpy(load_split_labels(preprocessed_dir, "train"))
    val_y = torch.from_numpy(load_split_labels(preprocessed_dir, "val"))
    subset = labeled_subset(train_y, cfg.label_fraction, cfg.seed, cfg.labels_per_class)
    require_every_class(train_y[subset], classes)
    val_subset = stratified_subset(val_y, cfg.seed, per_class=cfg.val_per_class)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_label_budget(Path(out_dir) / LABELS, subset, val_subset)
    val = (Rows.select(open_images(preprocessed_dir, "val"), val_subset), val_y[val_subset])
    augment = _augment(preprocessed_dir, mode, cfg)
    data = (_labeled_images(preprocessed_dir, subset, augment, device), train_y[subset].to(device), *val)
    encoder = starting_encoder(encoder_path, mode, init_path)
    if mode == "linear":
        encoder.requires_grad_(False)
        model, fit = _linear_probe(encoder, len(classes), data, cfg, fabric, runtime, log_metrics)
    else:
        model, fit = _train_network(encoder, len(classes), mode, data, cfg, fabric, log_metrics, augment)
    total, _ = step_budget(len(subset), cfg)
    log.info("finetune (%s): %d labeled + %d validation images, %d steps, best val_accuracy %.4f "
             "at step %d", mode, len(subset), len(val_subset), total, fit.accuracy, fit.step)
    path = Path(out_dir) / out_name
    save_classifier(model, classes, recipe(preprocessed_dir), path)
    return FinetuneRecord(str(path), mode, len(subset), len(val_subset), total, fit.accuracy, fit.step,
                          runtime.describe())


