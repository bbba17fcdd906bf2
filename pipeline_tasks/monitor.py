"""What a pretraining run watches: k-NN accuracy in chunks, embedding collapse, a progress bar."""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import torch
from torch import nn

from pipeline_tasks.augment import to_float

log = logging.getLogger(__name__)


class CollapseError(RuntimeError):
    """The embeddings collapsed to (nearly) one point: more training will not help."""


@torch.no_grad()
def embed(encoder: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
          batch: int = 512) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` (memory-mapped or not) -> L2-normalised features ``[N, D]`` on the
    device (eval mode, no augmentation), ``batch`` images at a time."""
    was_training = encoder.training
    encoder.eval()
    feats = []
    for i in range(0, len(images), batch):
        chunk = torch.as_tensor(np.asarray(images[i:i + batch])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats.append(encoder(to_float(chunk)).float())
    encoder.train(was_training)
    return nn.functional.normalize(torch.cat(feats), dim=1)


def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 test_y: torch.Tensor, k: int = 20, chunk: int = 1024) -> float:
    """Cosine k-NN (majority vote) accuracy, ``chunk`` test rows at a time: memory grows with
    ``chunk x N``, never ``N x N``."""
    k = min(k, len(train_f))
    n_classes = int(train_y.max()) + 1
    correct = 0
    for i in range(0, len(test_f), chunk):
        idx = (test_f[i:i + chunk] @ train_f.T).topk(k, dim=1).indices
        votes = nn.functional.one_hot(train_y[idx], n_classes).sum(1)
        correct += int((votes.argmax(1) == test_y[i:i + chunk]).sum())
    return correct / max(1, len(test_f))


def spread(features: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of L2-normalised ``[N, D]`` features, times ``sqrt(D)``: about 1
    for embeddings spread over the sphere, 0 when every image maps to the same point. A scalar
    tensor on the features' device (reading it is the only host sync)."""
    f = nn.functional.normalize(features.detach().float(), dim=1)
    return f.std(0).mean() * f.shape[1] ** 0.5


class Progress:
    """A one-line progress bar with views/s and ETA on a terminal; elsewhere a log line every
    10% (Prefect and CI logs are not terminals)."""

    def __init__(self, total_steps: int, views_per_step: int, label: str, enabled: bool = True,
                 first_step: int = 0) -> None:
        self.total, self.views, self.label, self.enabled = total_steps, views_per_step, label, enabled
        self.start, self.first = time.perf_counter(), first_step
        self.tty = enabled and sys.stderr.isatty()
        self.next_log = first_step / max(1, total_steps) + 0.1

    def update(self, steps_done: int) -> None:
        if not self.enabled or steps_done <= self.first:
            return
        rate = (steps_done - self.first) / max(time.perf_counter() - self.start, 1e-9)
        share = steps_done / max(1, self.total)
        eta = (self.total - steps_done) / max(rate, 1e-9)
        text = (f"{self.label} {share:6.1%} step {steps_done}/{self.total} "
                f"{rate * self.views:,.0f} views/s ETA {eta:,.0f} s")
        if self.tty:
            bar = "#" * int(share * 30)
            print(f"\r[{bar:<30}] {text}", end="" if steps_done < self.total else "\n", file=sys.stderr)
        elif share >= self.next_log or steps_done == self.total:
            log.info(text)
            self.next_log = share + 0.1
