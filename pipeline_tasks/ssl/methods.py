"""One small class per self-supervised method: two batches of views in, a scalar loss out.

Each method owns the encoder, its heads and any target network, so the training loop never
branches on the method, and one ``DistributedDataParallel`` wrapper covers every trainable
parameter. ``after_step(progress)`` runs after each optimiser step (BYOL moves its target).

- ``SimCLR`` (Chen et al. 2020): projector + NT-Xent, negatives from every rank.
- ``BYOL`` (Grill et al. 2020): projector + predictor; a momentum target, EMA from
  ``target_momentum`` to 1 on a cosine schedule; no negatives.
- ``VICReg`` (Bardes et al. 2022): an expander + variance/invariance/covariance terms. Chosen
  over MoCo v3 because it needs neither negatives nor a momentum encoder: it works with the
  small batches a CPU or one GPU affords and adds a third, non-contrastive family next to
  SimCLR (contrastive) and BYOL (self-distillation).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pipeline_tasks.config import PretrainConfig
from pipeline_tasks.ssl.losses import Gather, byol_loss, no_gather, nt_xent, vicreg_loss
from pipeline_tasks.ssl.monitors import spread


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a linear output: ``[B, in_dim] -> [B, out_dim]``."""
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    return nn.Sequential(*blocks, nn.Linear(dim, out_dim))


class SSLMethod(nn.Module):
    """``forward(view1, view2) -> loss``; views are float ``[B, C, H, W]``."""

    def __init__(self, encoder: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.gather: Gather = no_gather
        self.rank = 0
        # spread of the last training batch's head outputs (a device tensor: no sync per step)
        self.last_spread = torch.ones(())

    def watch(self, z: torch.Tensor) -> None:
        """Remember how spread out these head outputs are (the collapse monitor reads it)."""
        self.last_spread = spread(z)

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with the share of training done, in [0, 1]."""


class SimCLR(SSLMethod):
    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: PretrainConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.projector = mlp(feature_dim, feature_dim, cfg.projection_dim)
        self.temperature = cfg.temperature

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.encoder(torch.cat([view1, view2]))).float().chunk(2)
        self.watch(z1)
        return nt_xent(z1, z2, self.temperature, self.gather, self.rank)


class BYOL(SSLMethod):
    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: PretrainConfig) -> None:
        super().__init__(encoder, feature_dim)
        hidden = max(512, 2 * feature_dim)
        self.projector = mlp(feature_dim, hidden, cfg.projection_dim)
        self.predictor = mlp(cfg.projection_dim, hidden, cfg.projection_dim)
        self.target = nn.Sequential(copy.deepcopy(encoder), copy.deepcopy(self.projector))
        self.target.requires_grad_(False)
        self.base_momentum = cfg.target_momentum

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.predictor(self.projector(self.encoder(torch.cat([view1, view2])))).float().chunk(2)
        self.watch(p1)
        with torch.no_grad():
            t1, t2 = self.target(torch.cat([view1, view2])).float().chunk(2)
        return (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        tau = 1 - (1 - self.base_momentum) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2
        online: list[torch.Tensor] = [*self.encoder.parameters(), *self.projector.parameters()]
        torch._foreach_lerp_(list(self.target.parameters()), online, 1 - tau)
        for t, o in zip(self.target.buffers(), [*self.encoder.buffers(), *self.projector.buffers()],
                        strict=True):
            t.copy_(o)  # BatchNorm statistics follow the online network


class VICReg(SSLMethod):
    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: PretrainConfig) -> None:
        super().__init__(encoder, feature_dim)
        hidden = max(512, 4 * feature_dim)
        self.expander = mlp(feature_dim, hidden, hidden, layers=3)
        self.weights = cfg.vicreg_weights

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.expander(self.encoder(torch.cat([view1, view2]))).float().chunk(2)
        self.watch(z1)
        return vicreg_loss(z1, z2, self.weights, self.gather)


METHODS: dict[str, type[SimCLR] | type[BYOL] | type[VICReg]] = {
    "simclr": SimCLR, "byol": BYOL, "vicreg": VICReg}


def build_method(name: str, encoder: nn.Module, feature_dim: int, cfg: PretrainConfig) -> SSLMethod:
    if name not in METHODS:
        raise ValueError(f"unknown pretrain.method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name](encoder, feature_dim, cfg)
