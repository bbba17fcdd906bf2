"""Fine-tuning on the labeled fraction: full fine-tune or linear probe of the pretrained encoder."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline_tasks.augment import ViewAugment, to_float
from pipeline_tasks.config import FinetuneConfig
from pipeline_tasks.models import Classifier, EncoderSpec, ResNetEncoder, resolve_device
from pipeline_tasks.preprocess import load_split
from pipeline_tasks.pretrain import load_encoder, save_atomic

log = logging.getLogger(__name__)
LogMetrics = Callable[[dict[str, float], int], None]

# Labels are few, so fine-tuning sees mild augmentation: enough to stop 350 images being
# memorised in a few epochs, weak enough that every view still shows its class.
FINETUNE_AUGMENT = ViewAugment(crop_scale_min=0.8, rotation_degrees=10, jitter=0.2,
                               noise_std=0.0, erase_prob=0.0)


@dataclass(frozen=True)
class FinetuneRecord:
    classifier_path: str
    n_labeled: int
    best_val_accuracy: float
    best_epoch: int


def labeled_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a stratified ``fraction`` of ``labels``, at least one per class."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten().numpy()
        n = max(1, round(len(idx) * fraction))
        picked.append(rng.choice(idx, size=n, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked)))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device,
                   batch: int = 512) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` -> float logits ``[N, n_classes]`` on the CPU."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(to_float(images[i:i + batch].to(device))).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def _train_epoch(model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig,
                 optimizer: torch.optim.Optimizer, generator: torch.Generator) -> float:
    model.train()
    if cfg.mode == "linear":
        model.encoder.eval()  # frozen features: BatchNorm statistics stay as pretrained
    order = torch.randperm(len(x), device=x.device, generator=generator)
    total = torch.zeros((), device=x.device)
    for start in range(0, len(x), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            logits = model(FINETUNE_AUGMENT(x[idx], generator))
        loss = nn.functional.cross_entropy(logits.float(), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
    return float(total) / len(x)


def finetune_classifier(
    preprocessed_dir: str | Path, encoder_path: str | Path | None, classes: tuple[str, ...],
    cfg: FinetuneConfig, out_dir: str | Path, log_metrics: LogMetrics = lambda metrics, step: None,
) -> FinetuneRecord:
    """Train a classifier on ``cfg.label_fraction`` of the training labels; keep the epoch
    with the best validation accuracy. ``encoder_path=None`` trains from scratch (baseline).
    Writes ``classifier.pt``: ``{"spec", "classes", "state_dict"}``."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    train_x, train_y = load_split(preprocessed_dir, "train")
    val_x, val_y = load_split(preprocessed_dir, "val")
    subset = labeled_subset(train_y, cfg.label_fraction, cfg.seed)
    x, y = train_x[subset].to(device), train_y[subset].to(device)
    encoder = load_encoder(encoder_path) if encoder_path else ResNetEncoder(
        EncoderSpec(in_channels=train_x.shape[1]))
    model = Classifier(encoder, len(classes)).to(device)
    if cfg.mode == "linear":
        encoder.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    best_acc, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    for epoch in range(cfg.epochs):
        loss = _train_epoch(model, x, y, cfg, optimizer, generator)
        val_acc = float((predict_logits(model, val_x, device).argmax(1) == val_y).float().mean()) \
            if len(val_x) else float("nan")
        log_metrics({"finetune_loss": loss, "val_accuracy": val_acc}, epoch)
        if not val_acc <= best_acc:  # also true for NaN (no val split): keep the last epoch
            best_acc, best_epoch, best_state = val_acc, epoch, copy.deepcopy(model.state_dict())
        log.info("finetune epoch %d/%d loss %.4f val_acc %.4f", epoch + 1, cfg.epochs, loss, val_acc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "classifier.pt"
    state = {k: v.detach().cpu() for k, v in best_state.items()}
    save_atomic({"spec": encoder.spec.to_dict(), "classes": list(classes), "state_dict": state}, path)
    return FinetuneRecord(str(path), len(subset), best_acc, best_epoch)


def load_classifier(path: str | Path) -> tuple[Classifier, list[str]]:
    """Rebuild the classifier written by ``finetune_classifier`` (weights only)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = Classifier(ResNetEncoder(EncoderSpec.from_dict(blob["spec"])), len(blob["classes"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), list(blob["classes"])
