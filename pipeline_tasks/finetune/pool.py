"""The pool stage: learning from the unlabeled images after fine-tuning, as the methods that win
few-label benchmarks do: fine-tuning alone sees only the labeled images, a few dozen.

Two methods, both starting from the fine-tuned classifier and trained for ``pool.steps`` steps,
each step a batch of labeled images (weak views, cross-entropy) and ``pool.unlabeled_batch``
pool images:

- ``self_training`` (SimCLRv2's self-distillation, Chen et al. 2020, "Big Self-Supervised Models
  are Strong Semi-Supervised Learners"): the fine-tuned model, frozen, labels each pool image
  with soft targets (``softmax(logits / temperature)``); the student, the same network, matches
  them on augmented views (cross-entropy with soft targets). With a ``teacher`` (another,
  larger model and its own cache of the same images) it is distillation (Hinton et al. 2015):
  the student learns the teacher's soft targets, so a small fast model serves what a big one
  learned.
- ``fixmatch`` (Sohn et al. 2020): the model's own prediction on a weak view of a pool image,
  when its confidence is at least ``pool.threshold``, is the hard target for a strong view of
  the same image; ``pool.thresholds: flexmatch`` uses FlexMatch's per-class thresholds instead
  (``PseudoLabels``).

The checkpoint with the best validation accuracy is kept (model selection on validation only);
of equal ones the later, which has seen more of the pool under a lower learning rate (on mnist-5k
a 100-image validation set ties often: 0.97 at step 80 and at step 360 of 400, test 0.950 and
0.964).
Ours: neither method is in a library that trains our encoders on our batched views.
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
from torch.nn import functional as F

from pipeline_tasks.config import PoolConfig
from pipeline_tasks.data.batches import BatchSource, Rows
from pipeline_tasks.data.cache import load_split_labels, open_images
from pipeline_tasks.finetune.subsets import load_label_budget
from pipeline_tasks.finetune.views import pool_views
from pipeline_tasks.models.classifier import load_classifier, save_classifier
from pipeline_tasks.models.inference import predict_logits
from pipeline_tasks.progress import Progress
from pipeline_tasks.runtime import resolve_runtime
from pipeline_tasks.ssl import distributed
from pipeline_tasks.ssl.views import ViewAugment

log = logging.getLogger(__name__)
LogMetrics = Callable[[dict[str, float], int], None]
@dataclass(frozen=True)
class PoolRecord:
    classifier_path: str
    method: str  # self_training | fixmatch
    steps: int
    pool_images: int  # unlabeled images it learned from
    start_val_accuracy: float  # the fine-tuned model it started from
    best_val_accuracy: float
    best_step: int
    runtime: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Data:
    labeled_x: BatchSource  # uint8 [L, C, H, W], the labeled rows of the training split
    labeled_y: torch.Tensor
    pool: BatchSource  # the pool's images and the training split's, memory-mapped, P in all
    targets: torch.Tensor | None  # self-training: soft targets [P, K]
    val: tuple[Rows, torch.Tensor]  # the validation labels' images, read a batch at a time
    rows: torch.Generator  # on the CPU: which pool images each step draws
    views: tuple[ViewAugment, ViewAugment]  # (weak, strong)
    labeler: PseudoLabels | None = None  # fixmatch


def _unlabeled(preprocessed_dir: Path, device: torch.device) -> BatchSource:
    """The pool and the training split's images (their labels unused), served as one index space."""
    arrays = [open_images(preprocessed_dir, "pool"), open_images(preprocessed_dir, "train")]
    return BatchSource(arrays, device)


def _soft_targets(teacher: nn.Module, images: BatchSource, fabric: Fabric,
                  temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` of every unlabeled image, ``[P, K]`` on the device."""
    chunks = [torch.arange(i, min(i + 512, len(images))) for i in range(0, len(images), 512)]
    logits = [predict_logits(teacher, batch, fabric.device, 512) for batch in images.batches(chunks)]
    return torch.softmax(torch.cat(logits) / temperature, 1).to(fabric.device)


def _teacher_targets(teacher: tuple[Path, Path], unlabeled: BatchSource, fabric: Fabric,
                     temperature: float) -> torch.Tensor:
    """Soft targets of another model, ``teacher = (classifier, its preprocessed folder)``: the
    same images, in the same order, cached at the teacher's own size (distillation into a
    smaller, faster student)."""
    model, _ = load_classifier(teacher[0])
    images = _unlabeled(teacher[1], fabric.device)
    if len(images) != len(unlabeled):
        raise ValueError(f"{teacher[1]}: {len(images)} pool and training images, but the student's cache has "
                         f"{len(unlabeled)}; preprocess both from the same manifests")
    return _soft_targets(model.to(fabric.device), images, fabric, temperature)


class PseudoLabels:
    """FixMatch's hard pseudo-labels from weak-view probabilities ``[B, K]`` of pool rows ``[B]``
    (indices into the pool), and the mask of those confident enough: ``pool.threshold`` for
    every class (``pool.thresholds: fixed``), or FlexMatch's per-class thresholds (Zhang et al.
    2021, "FlexMatch: Boosting Semi-Supervised Learning with Curriculum Pseudo Labeling"): class
    ``c``'s is ``threshold * b / (2 - b)``, ``b`` the number of pool images whose last confident
    (``>= threshold``) prediction was ``c``, over the largest such count, the pool images never
    predicted confidently counted as one more class (the paper's warm-up). A class the model
    still confuses gets a lower bar, so it is not starved of pseudo-labels.
    """

    def __init__(self, cfg: PoolConfig, n_pool: int, n_classes: int, device: torch.device) -> None:
        self.threshold, self.flexmatch = cfg.threshold, cfg.thresholds == "flexmatch"
        self.n_classes = n_classes
        self.last = torch.full((n_pool,), -1, dtype=torch.long, device=device)  # -1: never confident

    def __call__(self, probs: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pseudo-labels [B] long, mask [B] float)``."""
        confidence, pseudo = probs.max(1)
        confident = confidence >= self.threshold
        if not self.flexmatch:
            return pseudo, confident.float()
        counts = torch.bincount(self.last + 1, minlength=self.n_classes + 1).float()
        learnt = counts[1:] / counts.max()
        mask = confidence >= (self.threshold * learnt / (2 - learnt))[pseudo]
        self.last[rows[confident]] = pseudo[confident]
        return pseudo, mask.float()


def _unlabeled_loss(model: nn.Module, batch: torch.Tensor, rows: torch.Tensor, data: _Data,
                    cfg: PoolConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, share of the batch that contributed)`` on pool images (``rows``: their indices)."""
    weak_view, strong_view = data.views
    if cfg.method == "self_training":
        assert data.targets is not None
        logits = model(strong_view(batch, g)).float()
        return -(data.targets[rows] * F.log_softmax(logits, 1)).sum(1).mean(), torch.ones(())
    assert data.labeler is not None
    with torch.no_grad():
        weak = torch.softmax(model(weak_view(batch, g)).float(), 1)
    pseudo, mask = data.labeler(weak, rows)
    loss = (F.cross_entropy(model(strong_view(batch, g)).float(), pseudo, reduction="none") * mask).mean()
    return loss, mask.mean()


def _val_accuracy(model: nn.Module, val: tuple[Rows, torch.Tensor], device: torch.device) -> float:
    x, y = val
    if len(x) == 0:
        return float("nan")
    return float((predict_logits(model, x, device).argmax(1) == y).float().mean())


def _step(model: nn.Module, data: _Data, cfg: PoolConfig, g: torch.Generator, fabric: Fabric,
          optimizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(data.labeled_x)
    idx = torch.randint(0, n, (min(cfg.labeled_batch, n),), generator=g, device=g.device)
    model.train()
    rows = torch.randint(0, len(data.pool), (cfg.unlabeled_batch,), generator=data.rows)
    batch = data.pool[rows]
    loss = F.cross_entropy(model(data.views[0](data.labeled_x[idx], g)).float(), data.labeled_y[idx])
    extra, used = _unlabeled_loss(model, batch, rows.to(fabric.device), data, cfg, g)
    loss = loss + cfg.unlabeled_weight * extra
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    optimizer.step()
    return loss.detach(), used


def _train(model: nn.Module, data: _Data, cfg: PoolConfig, fabric: Fabric,
           log_metrics: LogMetrics) -> tuple[float, float, int]:
    """The step loop; leaves ``model`` at its best validation check and returns ``(starting
    val accuracy, best val accuracy, best step)``."""
    start = _val_accuracy(model, data.val, fabric.device)
    best = (copy.deepcopy(model.state_dict()), start, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    wrapped, optimizer = fabric.setup(model, optimizer)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    g = torch.Generator(device=fabric.device).manual_seed(cfg.seed)
    every, progress = max(1, cfg.steps // cfg.checks), Progress(cfg.steps, cfg.unlabeled_batch, "pool")
    for step in range(1, cfg.steps + 1):
        loss, used = _step(wrapped, data, cfg, g, fabric, optimizer)
        scheduler.step()
        if step % every == 0 or step == cfg.steps:
            acc = _val_accuracy(wrapped, data.val, fabric.device)
            log_metrics({"pool_loss": float(loss), "pool_val_accuracy": acc,
                         "pool_used_share": float(used)}, step)
            progress.update(step)
            if acc >= best[1]:  # a tie goes to the later check: same validation, more of the pool seen
                best = (copy.deepcopy(model.state_dict()), acc, step)
    model.load_state_dict(best[0])
    return start, best[1], best[2]


def learn_from_pool(preprocessed_dir: str | Path, classifier_path: str | Path, cfg: PoolConfig,
                    labels_path: str | Path, out_path: str | Path, augment: str,
                    log_metrics: LogMetrics = lambda metrics, step: None,
                    teacher: tuple[Path, Path] | None = None) -> PoolRecord:
    """Continue the classifier at ``classifier_path`` on the pool by ``cfg.method``, with the
    labels fine-tuning used (``labels_path``: its ``labels.npz``) and its views (``augment``:
    ``finetune.augment``, see ``pool_views``); writes the model that did best on validation to
    ``out_path``.
    ``teacher``: ``(classifier, preprocessed folder)`` of another model whose soft targets
    ``self_training`` learns instead of its own (distillation)."""
    pre = Path(preprocessed_dir)
    torch.manual_seed(cfg.seed)
    runtime = resolve_runtime(cfg.device, cfg.precision, "pool")
    fabric = distributed.single_device(runtime)
    model, classes = load_classifier(classifier_path)
    model = model.to(fabric.device)
    train_y, val_y = (torch.from_numpy(load_split_labels(pre, split)) for split in ("train", "val"))
    subset, val_subset = load_label_budget(labels_path)
    unlabeled = _unlabeled(pre, fabric.device)
    distil = cfg.method == "self_training"
    if teacher and not distil:
        raise ValueError("distillation from a teacher is pool.method: self_training")
    targets = _teacher_targets(teacher, unlabeled, fabric, cfg.temperature) if teacher else \
        _soft_targets(model, unlabeled, fabric, cfg.temperature) if distil else None
    labeled = BatchSource([open_images(pre, "train")], fabric.device, rows=subset.numpy())
    val = (Rows.select(open_images(pre, "val"), val_subset), val_y[val_subset])
    labeler = None if distil else PseudoLabels(cfg, len(unlabeled), len(classes), fabric.device)
    data = _Data(labeled, train_y[subset].to(fabric.device), unlabeled, targets, val,
                 torch.Generator().manual_seed(cfg.seed), pool_views(augment), labeler)
    start, best, step = _train(model, data, cfg, fabric, log_metrics)
    log.info("pool (%s): %d unlabeled images, %d steps, val accuracy %.4f -> %.4f (step %d)", cfg.method,
             len(unlabeled), cfg.steps, start, best, step)
    recipe = torch.load(classifier_path, map_location="cpu", weights_only=True)["preprocess"]
    save_classifier(model, classes, recipe, Path(out_path))
    return PoolRecord(str(out_path), cfg.method, cfg.steps, len(unlabeled), start, best, step,
                      runtime.describe())
