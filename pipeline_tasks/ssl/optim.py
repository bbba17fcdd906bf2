"""Optimisers and schedules for pretraining: SGD, AdamW, LARS; warmup then cosine.

Biases and normalisation parameters get no weight decay and, under LARS, no trust-ratio
scaling (You et al. 2017; the SimCLR and BYOL recipes do the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pipeline_tasks.config import PretrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step per layer is scaled by ``eta * ||w|| / ||g + wd w||``.

    Parameter groups with ``lars=False`` (biases, norms) take plain SGD steps without decay.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-6, eta: float = 0.001) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"LARS: lr > 0, 0 <= momentum < 1, weight_decay >= 0 (got {lr}, {momentum}, "
                             f"{weight_decay})")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "eta": eta, "lars": True})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g.mul(trust)  # a device tensor: no host sync
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weights with decay; biases and 1-D (norm) parameters without decay or LARS scaling."""
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for p in module.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0, "lars": False}]


def build_optimizer(module: nn.Module, cfg: PretrainConfig, batch_size: int) -> torch.optim.Optimizer:
    """``cfg.optimizer`` at ``cfg.lr * batch_size / 256`` (the linear scaling rule)."""
    lr = cfg.lr * batch_size / 256
    groups = param_groups(module, cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for g in groups:
        g.pop("lars", None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor
