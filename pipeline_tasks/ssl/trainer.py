"""Self-supervised pretraining of the encoder on the unlabeled pool plus the labeled training
images (labels unused); validation and test images are never seen.

The loop only: the method (``ssl.methods``) turns two views into a loss, the batches
(``data.batches``) come from the cache, ``ssl.checkpoint`` makes the run resumable, ``ssl.distributed``
spreads it over ``torchrun`` ranks. Budgets are global: ``batch_size`` images per step over
all ranks, each rank taking its shard of the same seeded order.
"""

from __future__ import annotations

import hashlib
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
from pipeline_tasks.data.batches import BatchSource
from pipeline_tasks.data.cache import load_split, open_images
from pipeline_tasks.models.device import resolve_device
from pipeline_tasks.models.encoders import EncoderSpec, ResNetEncoder
from pipeline_tasks.models.inference import embed
from pipeline_tasks.models.weights import load_init
from pipeline_tasks.progress import Progress
from pipeline_tasks.ssl import distributed
from pipeline_tasks.ssl.checkpoint import (
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from pipeline_tasks.ssl.methods import SSLMethod, build_method
from pipeline_tasks.ssl.monitors import CollapseError, knn_accuracy
from pipeline_tasks.ssl.optim import build_optimizer, warmup_cosine
from pipeline_tasks.ssl.views import ViewAugment, view_pair
from pipeline_tasks.storage import save_atomic

log = logging.getLogger(__name__)
LogMetrics = Callable[[dict[str, float], int], None]
# Settings that do not change what a run computes: a checkpoint stays valid when they change.
_NOT_IN_FINGERPRINT = {"device", "resume", "log_every_steps", "knn_every_epochs", "checkpoint_every_steps"}


@dataclass(frozen=True)
class PretrainRecord:
    encoder_path: str
    final_loss: float
    knn_accuracy: float
    views_per_second: float
    n_images: int = 0  # images pretrained on: pool + labeled training split
    n_pool: int = 0
    data_wait_share: float = 0.0  # of the step time spent waiting for the next batch
    resumed_at_epoch: int | None = None  # 1-based epoch a resumed run continued from
    notes: tuple[str, ...] = field(default_factory=tuple)


def build_encoder(cfg: PretrainConfig, channels: int, init_path: str | Path | None) -> tuple[
        ResNetEncoder, list[str]]:
    """The encoder of ``cfg``, from random weights or from ``init_path``: an encoder this
    project saved (``{"spec", "state_dict"}``) or a torchvision-format ResNet state dict."""
    spec = EncoderSpec(in_channels=channels, base_width=cfg.base_width, arch=cfg.encoder,
                       small_stem=cfg.small_stem)
    encoder = ResNetEncoder(spec)
    return encoder, [] if init_path is None else load_init(encoder, init_path)


def _fingerprint(cfg: PretrainConfig, preprocessed_dir: Path, n: int, init: str | Path | None) -> str:
    settings = {k: v for k, v in cfg.model_dump().items() if k not in _NOT_IN_FINGERPRINT}
    splits = preprocessed_dir / "splits.json"
    data = splits.read_text() if splits.is_file() else str(n)
    blob = json.dumps([settings, data, n, str(init)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _precision(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    if cfg.precision == "fp16" or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return torch.float16  # with a gradient scaler
    return torch.bfloat16


@dataclass
class _Run:
    """Everything one training run holds, so the epoch loop reads as the algorithm."""

    cfg: PretrainConfig
    method: SSLMethod
    model: nn.Module  # the method, DDP-wrapped and compiled as asked
    source: BatchSource
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    views: tuple[ViewAugment, ViewAugment]
    generator: torch.Generator  # augmentation, on the device, one stream per rank
    order_generator: torch.Generator  # sample order, on the CPU, the same on every rank
    world: distributed.World
    device: torch.device
    dtype: torch.dtype | None
    batch: int  # global
    steps_per_epoch: int
    log_metrics: LogMetrics
    checkpoint_dir: Path | None
    fingerprint: str

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    def checkpoint(self, epoch: int, next_index: int, order: torch.Tensor) -> None:
        if self.checkpoint_dir is None or not self.world.is_main:
            return
        save_checkpoint(self.checkpoint_dir, {
            "fingerprint": self.fingerprint, "epoch": epoch, "next_index": next_index,
            "step": epoch * self.steps_per_epoch + next_index, "order": order,
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng_state(self.generator), "order_rng": self.order_generator.get_state()})

    def resume(self) -> tuple[int, int, torch.Tensor | None, int | None]:
        """``(epoch, index in epoch, order, resumed-at epoch)`` of the last good checkpoint."""
        if self.checkpoint_dir is None or self.cfg.resume != "auto":
            return 0, 0, None, None
        state, why = load_checkpoint(self.checkpoint_dir, self.fingerprint)
        if state is None:
            if why != "no checkpoint" and self.world.is_main:
                log.warning(why)
            return 0, 0, None, None
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], self.generator)
        self.order_generator.set_state(state["order_rng"])
        if self.world.is_main:
            log.info(why)
        epoch, index, order = int(state["epoch"]), int(state["next_index"]), state["order"]
        if index >= self.steps_per_epoch:
            return epoch + 1, 0, None, epoch + 2
        return epoch, index, order, epoch + 1


def _epoch(run: _Run, epoch: int, order: torch.Tensor, start: int, progress: Progress) -> tuple[float, float]:
    """Steps ``start..`` of one epoch; returns ``(mean loss over ranks, seconds waiting for data)``."""
    local = run.batch // run.world.size
    first = run.world.rank * local
    batches = [order[i * run.batch + first:i * run.batch + first + local]
               for i in range(start, run.steps_per_epoch)]
    total, wait, pending = torch.zeros((), device=run.device), 0.0, []
    stream = run.source.batches(batches)
    for i in range(start, run.steps_per_epoch):
        t = time.perf_counter()
        x = next(stream)
        wait += time.perf_counter() - t
        with torch.autocast(run.device.type, dtype=run.dtype or torch.float32, enabled=run.dtype is not None):
            loss = run.model(run.views[0](x, run.generator), run.views[1](x, run.generator))
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        step = epoch * run.steps_per_epoch + i + 1
        run.method.after_step(step / run.total_steps)
        total += loss.detach()
        if step % run.cfg.log_every_steps == 0:
            pending.append((step, loss.detach()))  # read at the epoch's end: no sync per step
        if run.cfg.checkpoint_every_steps and step % run.cfg.checkpoint_every_steps == 0:
            run.checkpoint(epoch, i + 1, order)
        progress.update(step)
    if run.world.is_main:
        for step, value in pending:
            run.log_metrics({"pretrain_loss_step": float(value)}, step)
    steps = run.steps_per_epoch - start
    return float(distributed.mean_over_ranks(total / max(1, steps))), wait


def _setup(preprocessed_dir: Path, cfg: PretrainConfig, device: torch.device, world: distributed.World,
           log_metrics: LogMetrics, checkpoint_dir: Path | None, init_path: str | Path | None,
           ) -> tuple[_Run, list[str], int]:
    train, pool = open_images(preprocessed_dir, "train"), open_images(preprocessed_dir, "pool")
    source = BatchSource([train, pool], device)
    n = len(source)
    local = max(2, min(cfg.batch_size, n) // world.size)
    if n < 2 * world.size:
        raise ValueError(f"pretraining needs at least {2 * world.size} images, found {n}")
    batch = local * world.size
    encoder, notes = build_encoder(cfg, int(source.shape[0]), init_path)
    method = build_method(cfg.method, encoder, encoder.feature_dim, cfg).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model: nn.Module = method
    if world.distributed:
        method.gather, method.rank = distributed.gather_with_grad, world.rank
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[world.local_rank] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        model = torch.compile(model)  # type: ignore[assignment]
    steps_per_epoch = n // batch
    optimizer = build_optimizer(method, cfg, batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch))
    dtype = _precision(cfg, device)
    run = _Run(cfg, method, model, source, optimizer, scheduler,
               torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
               view_pair(cfg.augment, **cfg.augment_overrides()),
               torch.Generator(device=device).manual_seed(cfg.seed * 1009 + world.rank),
               torch.Generator().manual_seed(cfg.seed), world, device, dtype, batch, steps_per_epoch,
               log_metrics, checkpoint_dir, _fingerprint(cfg, preprocessed_dir, n, init_path))
    if world.is_main:
        log.info("pretraining %s on %d images: %d from the unlabeled pool + %d labeled training images "
                 "(labels unused); batch %d over %d rank(s), %d steps an epoch", cfg.method, n, len(pool),
                 len(train), batch, world.size, steps_per_epoch)
    return run, notes, len(pool)


def pretrain_encoder(
    preprocessed_dir: str | Path, cfg: PretrainConfig, out_dir: str | Path,
    log_metrics: LogMetrics = lambda metrics, step: None, checkpoint_dir: str | Path | None = None,
    init_path: str | Path | None = None,
) -> PretrainRecord:
    """Pretrain; writes ``encoder.pt`` (``{"spec", "state_dict"}``) and ``views.png`` under
    ``out_dir`` (rank 0). With ``checkpoint_dir``, checkpoints go there every epoch (and every
    ``cfg.checkpoint_every_steps``), and ``cfg.resume: auto`` continues the last one.
    Raises ``CollapseError`` when the embeddings collapse."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    world = distributed.setup(device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    try:
        run, notes, n_pool = _setup(Path(preprocessed_dir), cfg, device, world, log_metrics,
                                    Path(checkpoint_dir) if checkpoint_dir else None, init_path)
        return _train(run, Path(preprocessed_dir), Path(out_dir), notes, n_pool)
    finally:
        distributed.teardown()


def _train(run: _Run, preprocessed_dir: Path, out: Path, notes: list[str], n_pool: int) -> PretrainRecord:
    cfg, main = run.cfg, run.world.is_main
    epoch0, index0, order, resumed = run.resume()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_view_grid(open_images(preprocessed_dir, "train")[:8], run.views, out / "views.png")
    progress = Progress(run.total_steps, 2 * run.batch, "pretrain", main,
                        epoch0 * run.steps_per_epoch + index0)
    loss, knn, views, seconds, waited = float("nan"), float("nan"), 0, 0.0, 0.0
    for epoch in range(epoch0, cfg.epochs):
        order = order if order is not None else torch.randperm(len(run.source), generator=run.order_generator)
        start = time.perf_counter()
        loss, wait = _epoch(run, epoch, order, index0 if epoch == epoch0 else 0, progress)
        elapsed = time.perf_counter() - start
        done = 2 * run.batch * (run.steps_per_epoch - (index0 if epoch == epoch0 else 0))
        views, seconds, waited = views + done, seconds + elapsed, waited + wait
        metrics = {"pretrain_loss": loss, "lr": float(run.scheduler.get_last_lr()[0]),
                   "views_per_second": done / elapsed, "data_wait_share": wait / elapsed}
        _check_collapse(run, metrics)
        if cfg.knn_every_epochs and (epoch + 1) % cfg.knn_every_epochs == 0 and epoch + 1 < cfg.epochs:
            metrics["knn_accuracy"] = knn = _knn_on_val(run.method.encoder, preprocessed_dir, run.device)
        run.checkpoint(epoch, run.steps_per_epoch, order)
        if main:
            run.log_metrics(metrics, epoch)
            log.info("pretrain epoch %d/%d loss %.4f (%.1f s, %.0f views/s, %.0f%% waiting for data)",
                     epoch + 1, cfg.epochs, loss, elapsed, done / elapsed, 100 * wait / elapsed)
        order = None
    encoder_path = out / "encoder.pt"
    if main:
        knn = _knn_on_val(run.method.encoder, preprocessed_dir, run.device)
        run.log_metrics({"knn_accuracy": knn}, cfg.epochs)
        encoder = run.method.encoder
        assert isinstance(encoder, ResNetEncoder)
        save_atomic({"spec": encoder.spec.to_dict(), "state_dict": _cpu_state(encoder)}, encoder_path)
    return PretrainRecord(str(encoder_path), loss, knn, views / max(seconds, 1e-9), len(run.source), n_pool,
                          waited / max(seconds, 1e-9), resumed, tuple(notes))


def _check_collapse(run: _Run, metrics: dict[str, float]) -> None:
    """The spread of the last batch's head outputs (what the loss compares), averaged over
    ranks so that every rank stops together."""
    metrics["embedding_spread"] = value = float(distributed.mean_over_ranks(run.method.last_spread))
    if value < run.cfg.collapse_threshold:
        raise CollapseError(
            f"pretraining collapsed: the embeddings' spread is {value:.3f} (1 = spread out, 0 = one "
            f"point), under pretrain.collapse_threshold {run.cfg.collapse_threshold}. Lower pretrain.lr, "
            "raise pretrain.warmup_epochs, or try another pretrain.method.")


def _knn_on_val(encoder: nn.Module, preprocessed_dir: Path, device: torch.device) -> float:
    """k-NN accuracy of val images against labeled train features: no label trains the
    encoder, but it tells whether pretraining learned anything before fine-tuning."""
    train_x, train_y = load_split(preprocessed_dir, "train")
    val_x, val_y = load_split(preprocessed_dir, "val")
    if len(val_x) == 0 or len(train_x) == 0:
        return float("nan")
    return knn_accuracy(embed(encoder, train_x, device), train_y.to(device),
                        embed(encoder, val_x, device), val_y.to(device))


def save_view_grid(images: np.ndarray, views: tuple[ViewAugment, ViewAugment], path: Path) -> None:
    """A PNG: each row an image, then its two augmented views (what the method compares)."""
    from PIL import Image  # noqa: PLC0415

    x = torch.from_numpy(np.array(images))
    if len(x) == 0:
        return
    g = torch.Generator().manual_seed(0)
    rows = torch.cat([x.float() / 127.5 - 1, views[0](x, g), views[1](x, g)], dim=3)  # [N, C, H, 3W]
    grid = ((torch.cat(list(rows), dim=1) + 1) * 127.5).clamp(0, 255).byte()  # [C, N*H, 3W]
    array = grid.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).resize(
        (array.shape[1] * 3, array.shape[0] * 3), Image.Resampling.NEAREST).save(path)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
