"""Running a model on cached images: the input scale, logits and embeddings, in batches."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class Images(Protocol):
    """What the batched loops read: a length, and slices of uint8 ``[B, C, H, W]`` images (an
    array, a memory map, a tensor, ``data.batches.Rows`` or ``BatchSource``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, at: slice, /) -> Any: ...


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,C,H,W]`` -> float in [-1, 1], the network's input scale."""
    return images.float().div_(127.5).sub_(1.0)


def _chunk(images: Images, start: int, batch: int, device: torch.device) -> torch.Tensor:
    """Images ``start .. start+batch-1`` of an array, a memory map, a tensor or a lazy selection
    (``data.batches.Rows``, ``BatchSource``), on ``device``."""
    chunk = images[start:start + batch]
    chunk = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
    return chunk.to(device, non_blocking=True)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Images, device: torch.device,
                   batch: int = 512, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` (memory-mapped or not) -> float logits ``[N, n_classes]`` on the
    CPU; computed on ``device``, where ``model`` must already be, under
    autocast to ``dtype`` when given (``Runtime.dtype``)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = to_float(_chunk(images, i, batch, device))
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out.append(model(x).float())
    return torch.cat(out).cpu() if out else torch.empty(0)


@torch.no_grad()
def embed(encoder: nn.Module, images: Images, device: torch.device,
          batch: int = 512, normalize: bool = True, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` (memory-mapped or not) -> float features ``[N, D]`` on the device,
    L2-normalised unless ``normalize`` is False (eval mode, no augmentation), ``batch`` images
    at a time, under autocast to ``dtype`` when given."""
    was_training = encoder.training
    encoder.eval()
    feats = []
    for i in range(0, len(images), batch):
        chunk = _chunk(images, i, batch, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            feats.append(encoder(to_float(chunk)).float())
    encoder.train(was_training)
    out = torch.cat(feats) if feats else torch.empty(0, device=device)
    return nn.functional.normalize(out, dim=1) if normalize else out
