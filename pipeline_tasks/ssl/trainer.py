"""Self-supervised pretraining of the encoder on the unlabeled pool plus the labeled training
images (labels unused); validation and test images are never seen.

The loop only: the method (``ssl.methods``) turns two views into a loss, ``ssl.run`` holds the
run's state under Lightning Fabric and saves and restores it, ``data.batches`` serves the
images from the cache. A run says what it did: device, precision, steps trained in this
process and images seen; training 0 steps of a non-zero budget is an error, never a result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline_tasks.config import PretrainConfig
from pipeline_tasks.data.batches import Rows
from pipeline_tasks.data.cache import content_digest, load_split_labels, open_images, view_source
from pipeline_tasks.evaluation.grids import view_grid
from pipeline_tasks.models.encoders import Encoder
from pipeline_tasks.models.inference import embed
from pipeline_tasks.models.starts import ResolvedWeights
from pipeline_tasks.progress import Progress
from pipeline_tasks.runtime import resolve_runtime
from pipeline_tasks.ssl import checkpoint, distributed
from pipeline_tasks.ssl.monitors import CollapseError, knn_accuracy
from pipeline_tasks.ssl.run import Position, Run, build_run
from pipeline_tasks.ssl.views import ViewAugment
from pipeline_tasks.storage import save_atomic

# The monitor's MLflow name says what it uses: every labeled training image, not the run's label
# budget (a diagnostic of the encoder, apart from the few-label numbers the evaluate stage reports).
KNN_METRIC = "knn_accuracy_all_labels"
KNN_SAMPLE = 10_000  # images per split the k-NN monitor embeds at most

log = logging.getLogger(__name__)
LogMetrics = Callable[[dict[str, float], int], None]


class TrainingError(RuntimeError):
    """A run that did not train what it was asked to."""


@dataclass(frozen=True)
class PretrainRecord:
    encoder_path: str
    final_loss: float
    knn_accuracy: float  # k-NN on val images against every labeled training image's embedding
    views_per_second: float
    n_images: int = 0  # images pretrained on: pool + labeled training split
    n_pool: int = 0
    data_wait_share: float = 0.0  # of the step time spent waiting for the next batch
    resumed_at_epoch: int | None = None  # 1-based epoch a resumed run continued from
    notes: tuple[str, ...] = field(default_factory=tuple)
    steps_trained: int = 0  # optimisation steps this process ran (a resume runs the rest)
    total_steps: int = 0  # the run's budget
    images_seen: int = 0  # images through the encoder in this process, 2 views each
    runtime: dict[str, str] = field(default_factory=dict)  # device, device_name, precision


def pretrain_encoder(
    preprocessed_dir: str | Path, cfg: PretrainConfig, out_dir: str | Path,
    log_metrics: LogMetrics = lambda metrics, step: None, checkpoint_dir: str | Path | None = None,
    init_path: str | Path | ResolvedWeights | None = None,
) -> PretrainRecord:
    """Pretrain; writes ``encoder.pt`` (``{"spec", "state_dict"}``) and ``views.png`` under
    ``out_dir`` (rank 0). With ``checkpoint_dir``, checkpoints go there every epoch (and every
    ``cfg.checkpoint_every_steps``), ``cfg.resume: auto`` continues the last one of the same
    run, and a finished run removes it. Raises ``CollapseError`` when the embeddings collapse,
    ``TrainingError`` when no step was trained, ``DeviceError`` for a device the machine lacks."""
    torch.manual_seed(cfg.seed)
    runtime = resolve_runtime(cfg.device, cfg.precision, "pretrain")
    fabric = distributed.launch(runtime)
    ok = False
    try:
        pre = Path(preprocessed_dir)
        ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        digest = content_digest(pre, ("train", "pool"))
        run, notes, n_pool = build_run(fabric, pre, cfg, ckpt, init_path, digest)
        record = _train(run, pre, Path(out_dir), log_metrics, notes, n_pool)
        ok = True
        return PretrainRecord(**{**record.__dict__, "runtime": runtime.describe()})
    finally:
        distributed.finish(fabric, ok)


def _epoch(run: Run, epoch: int, order: torch.Tensor, start: int, progress: Progress,
           log_metrics: LogMetrics) -> tuple[float, float]:
    """Steps ``start..`` of one epoch; returns ``(mean loss over ranks, seconds waiting for data)``."""
    b, rank = run.budget, run.fabric.global_rank
    local = b.batch // run.fabric.world_size
    batches = [order[i * b.batch + rank * local:i * b.batch + (rank + 1) * local]
               for i in range(start, b.steps_per_epoch)]
    total, wait, pending = torch.zeros((), device=run.fabric.device), 0.0, []
    stream = run.source.batches(batches)
    for i in range(start, b.steps_per_epoch):
        t = time.perf_counter()
        x = next(stream)
        wait += time.perf_counter() - t
        loss = run.model(run.views[0](x, run.augment_rng), run.views[1](x, run.augment_rng))
        run.optimizer.zero_grad(set_to_none=True)
        run.fabric.backward(loss)
        run.optimizer.step()
        run.scheduler.step()
        step = epoch * b.steps_per_epoch + i + 1
        run.method.after_step(step / b.total_steps)
        total += loss.detach()
        if step % run.cfg.log_every_steps == 0:
            pending.append((step, loss.detach()))  # read at the epoch's end: no sync per step
        if run.cfg.checkpoint_every_steps and step % run.cfg.checkpoint_every_steps == 0:
            run.save(epoch, i + 1, order)
        progress.update(step)
    if run.fabric.is_global_zero:
        for step, value in pending:
            log_metrics({"pretrain_loss_step": float(value)}, step)
    return float(distributed.mean_over_ranks(run.fabric, total / max(1, b.steps_per_epoch - start))), wait


def _train(run: Run, preprocessed_dir: Path, out: Path, log_metrics: LogMetrics, notes: list[str],
           n_pool: int) -> PretrainRecord:
    cfg, main, b = run.cfg, run.fabric.is_global_zero, run.budget
    at = run.resume()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_view_grid(preprocessed_dir, run.views, out / "views.png")
    first = at.epoch * b.steps_per_epoch + at.index
    progress = Progress(b.total_steps, 2 * b.batch, "pretrain", main, first)
    loss, seconds, waited, order = float("nan"), 0.0, 0.0, at.order
    for epoch in range(at.epoch, cfg.epochs):
        order = order if order is not None else torch.randperm(len(run.source), generator=run.order_rng)
        start, begin = time.perf_counter(), at.index if epoch == at.epoch else 0
        loss, wait = _epoch(run, epoch, order, begin, progress, log_metrics)
        elapsed = time.perf_counter() - start
        seconds, waited = seconds + elapsed, waited + wait
        metrics = {"pretrain_loss": loss, "lr": float(run.scheduler.get_last_lr()[0]),
                   "views_per_second": 2 * b.batch * (b.steps_per_epoch - begin) / elapsed,
                   "data_wait_share": wait / elapsed}
        _check_collapse(run, metrics)
        every = cfg.knn_every_epochs
        if main and every and (epoch + 1) % every == 0 and epoch + 1 < cfg.epochs:
            metrics[KNN_METRIC] = _knn_on_val(run.method.encoder, preprocessed_dir, run.fabric.device)
        run.save(epoch, b.steps_per_epoch, order)
        if main:
            log_metrics(metrics, epoch)
            log.info("pretrain epoch %d/%d loss %.4f (%.1f s, %.0f views/s, %.0f%% waiting for data)",
                     epoch + 1, cfg.epochs, loss, elapsed, metrics["views_per_second"], 100 * wait / elapsed)
        order = None
    trained = b.total_steps - first
    _require_steps(trained, b.total_steps, at)
    knn = _save_encoder(run, preprocessed_dir, out / "encoder.pt", log_metrics)
    return PretrainRecord(str(out / "encoder.pt"), loss, knn, 2 * b.batch * trained / max(seconds, 1e-9),
                          len(run.source), n_pool, waited / max(seconds, 1e-9),
                          None if at.resumed_from_step is None else at.epoch + 1, tuple(notes),
                          trained, b.total_steps, 2 * b.batch * trained)


def _save_encoder(run: Run, preprocessed_dir: Path, path: Path, log_metrics: LogMetrics) -> float:
    """Rank 0 scores the final k-NN monitor and writes the encoder; then the run's checkpoint is
    retired (a finished run is never resumed). Returns the k-NN accuracy (NaN on other ranks)."""
    knn = float("nan")
    if run.fabric.is_global_zero:
        knn = _knn_on_val(run.method.encoder, preprocessed_dir, run.fabric.device)
        log_metrics({KNN_METRIC: knn}, run.cfg.epochs)
        encoder = run.method.encoder
        assert isinstance(encoder, Encoder)
        save_atomic({"spec": encoder.spec.to_dict(), "state_dict": _cpu_state(encoder)}, path)
    checkpoint.retire(run.fabric, run.checkpoint_dir)
    return knn


def _require_steps(trained: int, total: int, at: Position) -> None:
    if trained <= 0 < total:
        raise TrainingError(
            f"pretraining trained 0 of its {total} steps: the checkpoint it resumed (step "
            f"{at.resumed_from_step}) was already at the end. Nothing was written; delete "
            "artifacts/checkpoints/pretrain or set pretrain.resume: never, and run again.")


def _check_collapse(run: Run, metrics: dict[str, float]) -> None:
    """The spread of the last batch's head outputs (what the loss compares), averaged over
    ranks so that every rank stops together."""
    value = float(distributed.mean_over_ranks(run.fabric, run.method.last_spread.to(run.fabric.device)))
    metrics["embedding_spread"] = value
    if value < run.cfg.collapse_threshold:
        raise CollapseError(
            f"pretraining collapsed: the embeddings' spread is {value:.3f} (1 = spread out, 0 = one "
            f"point), under pretrain.collapse_threshold {run.cfg.collapse_threshold}. Lower pretrain.lr, "
            "raise pretrain.warmup_epochs, or try another pretrain.method.")


def _knn_on_val(encoder: nn.Module, preprocessed_dir: Path, device: torch.device) -> float:
    """k-NN accuracy of val images against labeled training images' embeddings: no label trains
    the encoder, but it tells whether pretraining learned anything before fine-tuning. At most
    ``KNN_SAMPLE`` images of each split (a fixed sample, the same at every check), read a batch at
    a time from the memory map: its cost does not grow with the dataset."""
    x, y = _knn_sample(preprocessed_dir, "train")
    val_x, val_y = _knn_sample(preprocessed_dir, "val")
    if len(val_x) == 0 or len(x) == 0:
        return float("nan")
    return knn_accuracy(embed(encoder, x, device), y.to(device),
                        embed(encoder, val_x, device), val_y.to(device))


def _knn_sample(preprocessed_dir: Path, split: str) -> tuple[Rows, torch.Tensor]:
    """Rows of ``split`` for the k-NN monitor: all of them, or ``KNN_SAMPLE`` drawn with seed 0."""
    labels = load_split_labels(preprocessed_dir, split)
    rows = np.arange(len(labels))
    if len(rows) > KNN_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(rows, KNN_SAMPLE, replace=False))
    return Rows.select(open_images(preprocessed_dir, split), rows), torch.from_numpy(labels[rows])


def save_view_grid(preprocessed_dir: Path, views: tuple[ViewAugment, ViewAugment], path: Path,
                   max_rows: int = 10) -> None:
    """A PNG with one row per class (the first training image of each, up to ``max_rows``):
    the image, then its two augmented views, which the method learns to match (cut, as in
    training, from ``view_source``)."""
    images, labels = open_images(preprocessed_dir, "train"), load_split_labels(preprocessed_dir, "train")
    if len(images) == 0:
        return
    names_file = preprocessed_dir / "classes.json"
    names = json.loads(names_file.read_text()) if names_file.is_file() else []
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:max_rows]] or [0]
    x = torch.from_numpy(np.array(images[picks]))
    source = torch.from_numpy(np.array(view_source(preprocessed_dir, "train")[picks]))
    g = torch.Generator().manual_seed(0)

    def to_uint8(v: torch.Tensor) -> torch.Tensor:
        return ((v + 1) * 127.5).round().clamp(0, 255).byte()

    rows = torch.stack([x, to_uint8(views[0](source, g)), to_uint8(views[1](source, g))], 1).numpy()
    label_names = [names[labels[i]] if labels[i] < len(names) else str(labels[i]) for i in picks]
    view_grid(rows, path, label_names if len(labels) else None)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
