"""Self-supervised losses as free functions of tensors.

``gather`` arguments take a function that concatenates a tensor over all distributed ranks,
keeping gradients (``distributed.gatherer``); the default is the identity, one process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], torch.Tensor]


def no_gather(x: torch.Tensor) -> torch.Tensor:
    """One process: nothing to gather from other ranks."""
    return x


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be [B, D]; got {tuple(z1.shape)} and {tuple(z2.shape)}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: Gather = no_gather,
            rank: int = 0) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy.

    ``z1``, ``z2``: ``[B, D]`` projections of two views of the same ``B`` images. Each of the
    ``2B`` embeddings must pick its partner out of the other ``2B - 1`` (times the number of
    ranks: ``gather`` brings the other ranks' embeddings as negatives). Returns a scalar.
    """
    _check_pair(z1, z2)
    if z1.shape[0] < 2:
        raise ValueError("nt_xent needs a batch of at least 2 images (the negatives)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    everyone = gather(z)  # [world * 2B, D]: rank r's rows are r*2B .. r*2B + 2B - 1
    logits = z @ everyone.T / temperature
    offset = rank * 2 * b
    rows = torch.arange(2 * b, device=z.device)
    logits[rows, offset + rows] = float("-inf")  # an embedding is not its own positive
    targets = offset + torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)`` averaged over the batch; no gradient flows
    into ``target`` (the momentum network's projection). ``[B, D]`` each; returns a scalar."""
    _check_pair(prediction, target)
    p = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(1)).mean()


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, weights: tuple[float, float, float] = (25.0, 25.0, 1.0),
                gather: Gather = no_gather) -> torch.Tensor:
    """VICReg (Bardes et al. 2022): invariance (MSE between views) + variance (hinge keeping
    each dimension's std above 1) + covariance (off-diagonal covariance pushed to 0).
    ``[B, D]`` each; the variance and covariance terms use the batch of every rank."""
    _check_pair(z1, z2)
    if z1.shape[0] < 2:
        raise ValueError("vicreg_loss needs a batch of at least 2 images (a variance)")
    sim_w, var_w, cov_w = weights
    invariance = F.mse_loss(z1.float(), z2.float())
    variance = covariance = torch.zeros((), device=z1.device)
    for z in (gather(z1.float()), gather(z2.float())):
        z = z - z.mean(0)
        std = torch.sqrt(z.var(0) + 1e-4)
        variance = variance + F.relu(1 - std).mean() / 2
        n, d = z.shape
        cov = (z.T @ z) / (n - 1)
        off = cov - torch.diag(torch.diag(cov))
        covariance = covariance + off.pow(2).sum() / d
    return sim_w * invariance + var_w * variance + cov_w * covariance
