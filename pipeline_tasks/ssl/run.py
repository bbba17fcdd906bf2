"""One pretraining run's state, built once: the method under Fabric, its optimiser and schedule,
the batches, the views and the random streams; saved to and restored from checkpoints.

Budgets are global: ``batch_size`` images per step over all ranks, each rank taking its shard of
the same seeded order. The sample order comes from one CPU generator that every rank shares;
the augmentations from one generator per rank on its device, whose state each checkpoint keeps
per rank.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import nn

from pipeline_tasks.config import PretrainConfig
from pipeline_tasks.data.batches import BatchSource
from pipeline_tasks.data.cache import recipe, view_source
from pipeline_tasks.models.encoders import Encoder, EncoderSpec, resolve_small_stem
from pipeline_tasks.models.starts import ResolvedWeights, as_resolved
from pipeline_tasks.models.weights import OWN, apply_init, init_normalisation, pretrained_cfg, read_weights
from pipeline_tasks.ssl import checkpoint, distributed
from pipeline_tasks.ssl.methods import SSLMethod, build_method
from pipeline_tasks.ssl.optim import build_optimizer, warmup_cosine
from pipeline_tasks.ssl.views import ViewAugment, view_pair

log = logging.getLogger(__name__)
LogMetrics = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class Budget:
    batch: int  # global, over all ranks
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass(frozen=True)
class Position:
    """Where a run starts: an epoch, the index of the next step in it, and that epoch's order
    when it is resumed mid-way."""

    epoch: int = 0
    index: int = 0
    order: torch.Tensor | None = None
    resumed_from_step: int | None = None


@dataclass
class Run:
    """Everything one training run holds, so the epoch loop reads as the algorithm."""

    cfg: PretrainConfig
    fabric: Fabric
    method: SSLMethod  # unwrapped: its encoder is what gets saved
    model: nn.Module  # the method under Fabric (DDP, precision), compiled when asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    source: BatchSource
    views: tuple[ViewAugment, ViewAugment]
    augment_rng: torch.Generator  # on the device, one stream per rank
    order_rng: torch.Generator  # on the CPU, the same on every rank
    budget: Budget
    checkpoint_dir: Path | None
    fingerprint: str

    def save(self, epoch: int, next_index: int, order: torch.Tensor) -> None:
        """A checkpoint (every rank calls; rank 0 writes), never at the very end of training."""
        step = epoch * self.budget.steps_per_epoch + next_index
        if self.checkpoint_dir is None or step >= self.budget.total_steps:
            return
        checkpoint.save(self.fabric, self.checkpoint_dir, {
            "fingerprint": self.fingerprint, "epoch": epoch, "next_index": next_index, "step": step,
            "order": order, "model": self.method, "optimizer": self.optimizer, "scheduler": self.scheduler,
            "precision": self.fabric.strategy.precision, "order_rng": self.order_rng.get_state(),
            "augment_rng": distributed.gather_states(self.fabric, self.augment_rng.get_state()),
            "torch_rng": distributed.gather_states(self.fabric, torch.get_rng_state())})

    def resume(self) -> Position:
        """The position of this run's last checkpoint, its state restored on every rank."""
        if self.checkpoint_dir is None or self.cfg.resume != "auto":
            return Position()
        state, why = checkpoint.load(self.fabric, self.checkpoint_dir, self.fingerprint)
        if why != "no checkpoint" and self.fabric.is_global_zero:
            log.log(logging.INFO if state is not None else logging.WARNING, why)
        if state is None:
            return Position()
        for key, target in (("model", self.method), ("optimizer", self.optimizer),
                            ("scheduler", self.scheduler), ("precision", self.fabric.strategy.precision)):
            target.load_state_dict(state[key])
        rank = self.fabric.global_rank
        self.augment_rng.set_state(state["augment_rng"][rank].clone())  # a view with an offset is refused
        log.debug("rank %d resumes its augmentation stream %s", rank,
                  hashlib.sha256(state["augment_rng"][rank].numpy().tobytes()).hexdigest()[:12])
        torch.set_rng_state(state["torch_rng"][rank].clone())
        self.order_rng.set_state(state["order_rng"])
        epoch, index = int(state["epoch"]), int(state["next_index"])
        if index >= self.budget.steps_per_epoch:
            return Position(epoch + 1, 0, None, int(state["step"]))
        return Position(epoch, index, state["order"], int(state["step"]))


def build_encoder(cfg: PretrainConfig, channels: int, init: str | Path | ResolvedWeights | None,
                  image_size: int) -> tuple[Encoder, list[str]]:
    """The encoder of ``cfg`` for ``image_size`` px views, from random weights or from ``init``
    (``pretrain.init``, resolved by ``models.starts`` unless it already is). The spec is resolved
    here, once: ``small_stem: auto`` by the image size, the input normalisation by the starting
    weights (none, the saved encoder's own, timm's pretrained_cfg for a timm encoder, ImageNet's
    for torchvision weights). Notes say what was loaded, its source, licence and sha256, and
    the input size timm's weights were trained at. ``ValueError`` for a timm model whose input
    size is fixed (ViTs) at another size than ``image_size``."""
    resolved = None if init is None else as_resolved(init, cfg.encoder, cfg.allow_download)
    weights = None if resolved is None else read_weights(resolved.path)
    given = pretrained_cfg(cfg.encoder, None if resolved is None else resolved.pretrained_cfg)
    trained_at = int(given["input_size"][-1]) if given.get("input_size") else None
    if given.get("fixed_input_size") and trained_at != image_size:
        raise ValueError(f"pretrain.encoder {cfg.encoder} takes {trained_at} px inputs only (timm's "
                         f"fixed_input_size); set data.image_size: {trained_at}")
    mean, std = init_normalisation(weights, cfg.encoder, channels, given)
    small_stem = resolve_small_stem(cfg.small_stem, image_size, cfg.encoder)
    encoder = Encoder(EncoderSpec(in_channels=channels, base_width=cfg.base_width, arch=cfg.encoder,
                                  small_stem=small_stem, mean=mean, std=std))
    if weights is None or resolved is None:
        return encoder, []
    notes = [*apply_init(encoder, weights, resolved.label()), f"starting weights: {resolved.describe()}"]
    if trained_at and weights.kind != OWN:
        notes.append(f"the weights were trained on {trained_at} px inputs (timm's pretrained_cfg); this "
                     f"run's are {image_size} px (data.image_size)")
    return encoder, notes


def _budget(n: int, cfg: PretrainConfig, world_size: int) -> Budget:
    if n < 2 * world_size:
        raise ValueError(f"pretraining needs at least {2 * world_size} images, found {n}")
    local = max(2, min(cfg.batch_size, n) // world_size)
    batch = local * world_size
    return Budget(batch, n // batch, cfg.epochs)


def _wrap(fabric: Fabric, method: SSLMethod, cfg: PretrainConfig, budget: Budget) -> tuple[
        nn.Module, Any, torch.optim.lr_scheduler.LambdaLR]:
    """The method and its optimiser under Fabric, and the warmup-cosine schedule."""
    if fabric.device.type == "cuda":  # the encoder is channels-last on every device
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if fabric.world_size > 1:
        method.gather, method.rank = distributed.gatherer(fabric), fabric.global_rank
        if fabric.device.type == "cuda":  # batch statistics of the global batch, as SimCLR's global BN
            nn.SyncBatchNorm.convert_sync_batchnorm(method)  # (PyTorch syncs them on GPUs only)
    optimizer = build_optimizer(method, cfg, budget.batch)
    model: nn.Module = method
    if cfg.compile and fabric.device.type == "cuda":
        model = torch.compile(method)  # type: ignore[assignment]
    model, optimizer = fabric.setup(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        cfg.warmup_epochs * budget.steps_per_epoch, budget.total_steps))
    return model, optimizer, scheduler


def build_run(fabric: Fabric, preprocessed_dir: Path, cfg: PretrainConfig, checkpoint_dir: Path | None,
              init_path: str | Path | ResolvedWeights | None, data_digest: str) -> tuple[Run, list[str], int]:
    """The run, the notes on its starting weights, and how many pool images it trains on.
    ``init_path`` is resolved here, once (``models.starts``), unless it already is. The views are
    cut from ``view_source`` (the ``cache_size`` images when there are) and made
    ``image_size`` px."""
    train, pool = view_source(preprocessed_dir, "train"), view_source(preprocessed_dir, "pool")
    source = BatchSource([train, pool], fabric.device)
    budget = _budget(len(source), cfg, fabric.world_size)
    size = int(recipe(preprocessed_dir)["image_size"])
    init = None if init_path is None else as_resolved(init_path, cfg.encoder, cfg.allow_download)
    encoder, notes = build_encoder(cfg, int(source.shape[0]), init, size)
    method = build_method(cfg.method, encoder, encoder.feature_dim, cfg).to(fabric.device)
    model, optimizer, scheduler = _wrap(fabric, method, cfg, budget)
    augment_rng = torch.Generator(device=fabric.device).manual_seed(cfg.seed * 1009 + fabric.global_rank)
    views = tuple(v.replace(out_size=size) for v in view_pair(cfg.augment, **cfg.augment_overrides()))
    run = Run(cfg, fabric, method, model, optimizer, scheduler, source, (views[0], views[1]), augment_rng,
              torch.Generator().manual_seed(cfg.seed), budget, checkpoint_dir,
              checkpoint.fingerprint(cfg, data_digest, None if init is None else init.path,
                                     {"spec": encoder.spec.to_dict(), "image_size": size,
                                      "world_size": fabric.world_size}))
    if fabric.is_global_zero:
        log.info("pretraining %s on %d images: %d from the unlabeled pool + %d labeled training images "
                 "(labels unused); batch %d over %d rank(s), %d steps an epoch, %d px views of %d px "
                 "images", cfg.method, len(source), len(pool), len(train), budget.batch, fabric.world_size,
                 budget.steps_per_epoch, size, source.shape[-1])
    return run, notes, len(pool)
