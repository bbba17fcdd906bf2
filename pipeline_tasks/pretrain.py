"""SimCLR pretraining of the encoder on the unlabeled pool plus the labeled training images
(labels unused); validation and test images are never seen."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline_tasks.augment import ViewAugment, to_float
from pipeline_tasks.config import PretrainConfig
from pipeline_tasks.losses import nt_xent
from pipeline_tasks.models import EncoderSpec, ResNetEncoder, projection_head, resolve_device
from pipeline_tasks.preprocess import load_pool, load_split

log = logging.getLogger(__name__)
LogMetrics = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class PretrainRecord:
    encoder_path: str
    final_loss: float
    knn_accuracy: float
    views_per_second: float
    n_images: int = 0  # images pretrained on: pool + labeled training split
    n_pool: int = 0


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` to a temp file then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` -> L2-normalised features ``[N, D]`` (eval mode, no augmentation)."""
    encoder.eval()
    feats = [encoder(to_float(images[i:i + batch].to(device))).float() for i in range(0, len(images), batch)]
    return nn.functional.normalize(torch.cat(feats), dim=1)


def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 test_y: torch.Tensor, k: int = 20) -> float:
    """Cosine k-NN (majority vote) accuracy: how linearly separable the features already are."""
    k = min(k, len(train_f))
    idx = (test_f @ train_f.T).topk(k, dim=1).indices
    votes = torch.nn.functional.one_hot(train_y[idx], int(train_y.max()) + 1).sum(1)
    return float((votes.argmax(1) == test_y).float().mean())


def pretrain_one_epoch(
    encoder: nn.Module, head: nn.Module, images: torch.Tensor, augment: ViewAugment,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: PretrainConfig, generator: torch.Generator,
) -> float:
    """One pass over ``images`` (uint8 ``[N,C,H,W]`` on the device); returns the mean loss."""
    encoder.train()
    head.train()
    device = images.device
    batch = min(cfg.batch_size, len(images))
    order = torch.randperm(len(images), device=device, generator=generator)
    total, steps = torch.zeros((), device=device), 0
    for start in range(0, len(images) - batch + 1, batch):  # drop the ragged last batch
        x = images[order[start:start + batch]]
        views = torch.cat([augment(x, generator), augment(x, generator)])
        if device.type == "cuda":
            views = views.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = head(encoder(views))
        z1, z2 = z.float().chunk(2)
        loss = nt_xent(z1, z2, temperature=cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach()
        steps += 1
    return float(total) / max(1, steps)  # one sync per epoch, not per step


def pretrain_encoder(
    preprocessed_dir: str | Path, cfg: PretrainConfig, out_dir: str | Path,
    log_metrics: LogMetrics = lambda metrics, step: None,
) -> PretrainRecord:
    """Train encoder + projection head with NT-Xent; writes ``encoder.pt``.

    ``encoder.pt`` holds ``{"spec": EncoderSpec dict, "state_dict": ...}``.
    """
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    train, _ = load_split(preprocessed_dir, "train")
    pool = load_pool(preprocessed_dir)
    images = torch.cat([train, pool]) if len(pool) else train
    if len(images) < 2:
        raise ValueError(f"pretraining needs at least 2 training images, found {len(images)}")
    log.info("pretraining on %d images: %d from the unlabeled pool + %d labeled training images "
             "(labels unused)", len(images), len(pool), len(train))
    images = images.to(device)
    spec = EncoderSpec(in_channels=images.shape[1], base_width=cfg.base_width)
    encoder = ResNetEncoder(spec).to(device)
    head = projection_head(encoder.feature_dim, cfg.projection_dim).to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(images) // min(cfg.batch_size, len(images)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch))
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    augment = ViewAugment.from_config(cfg)
    loss = float("nan")
    views, seconds = 0, 0.0
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        loss = pretrain_one_epoch(encoder, head, images, augment, optimizer, scheduler, cfg, generator)
        elapsed = time.perf_counter() - start
        views, seconds = views + 2 * steps_per_epoch * min(cfg.batch_size, len(images)), seconds + elapsed
        log_metrics({"pretrain_loss": loss, "lr": float(scheduler.get_last_lr()[0]),
                     "views_per_second": 2 * steps_per_epoch * min(cfg.batch_size, len(images)) / elapsed},
                    epoch)
        log.info("pretrain epoch %d/%d loss %.4f (%.1f s)", epoch + 1, cfg.epochs, loss, elapsed)
    knn = _knn_on_val(encoder, preprocessed_dir, train, device)
    log_metrics({"knn_accuracy": knn}, cfg.epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder_path = out / "encoder.pt"
    save_atomic({"spec": spec.to_dict(), "state_dict": _cpu_state(encoder)}, encoder_path)
    return PretrainRecord(str(encoder_path), loss, knn, views / max(seconds, 1e-9), len(images), len(pool))


def _knn_on_val(encoder: nn.Module, preprocessed_dir: str | Path, train_images: torch.Tensor,
                device: torch.device) -> float:
    """k-NN accuracy of val images against labeled train features: a label-free training signal
    would not need it, but it tells whether pretraining learned anything before fine-tuning."""
    _, train_y = load_split(preprocessed_dir, "train")
    val_x, val_y = load_split(preprocessed_dir, "val")
    if len(val_x) == 0:
        return float("nan")
    return knn_accuracy(embed(encoder, train_images, device), train_y.to(device),
                        embed(encoder, val_x, device), val_y.to(device))


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def load_encoder(path: str | Path) -> ResNetEncoder:
    """Rebuild the encoder saved by ``pretrain_encoder`` (weights only, no pickled code)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    encoder = ResNetEncoder(EncoderSpec.from_dict(blob["spec"]))
    encoder.load_state_dict(blob["state_dict"])
    return encoder
