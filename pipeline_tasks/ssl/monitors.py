"""What a pretraining run watches: k-NN accuracy in chunks and embedding collapse."""

from __future__ import annotations

import torch
from torch import nn


class CollapseError(RuntimeError):
    """The embeddings collapsed to (nearly) one point: more training will not help."""


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
