"""Encoders and heads, built from torchvision's ResNets.

``compact`` (the default) is a ResNet for small images on a CPU: a 3x3 stride-1 stem and no
max-pool (a 7x7/2 stem plus pool would shrink 28 px digits to 7 px before the first block),
widths ``w, 2w, 4w, 8w`` with one ``BasicBlock`` per stage. At ``w=16`` it has 0.31M parameters
and runs ~1,200 views/s on a 2-core CPU; ``w=32`` is 3.7x slower there for no gain on mnist-5k.
``resnet18/34/50`` are torchvision's, optionally with the same small-image stem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

ARCHS = ("compact", "resnet18", "resnet34", "resnet50")


@dataclass(frozen=True)
class EncoderSpec:
    in_channels: int = 1
    base_width: int = 16  # compact only
    blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1)  # compact only
    arch: str = "compact"
    small_stem: bool = True  # torchvision ResNets: 3x3 stride-1 conv1 and no max-pool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> EncoderSpec:
        return cls(int(d["in_channels"]), int(d["base_width"]),  # type: ignore[call-overload]
                   tuple(d["blocks_per_stage"]), str(d.get("arch", "compact")),  # type: ignore[arg-type]
                   bool(d.get("small_stem", True)))


class ResNetEncoder(nn.Module):
    """``[B, C, H, W]`` float -> ``[B, feature_dim]`` features (global average pooled)."""

    def __init__(self, spec: EncoderSpec = EncoderSpec()) -> None:
        super().__init__()
        if (spec.in_channels not in (1, 3) or spec.base_width < 1 or not spec.blocks_per_stage
                or spec.arch not in ARCHS):
            raise ValueError(f"invalid encoder spec: {spec}")
        self.spec = spec
        if spec.arch != "compact":
            self.body, self.feature_dim = _torchvision_resnet(spec)
            return
        w = spec.base_width
        layers: list[nn.Module] = [
            nn.Conv2d(spec.in_channels, w, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        ]
        in_w = w
        for stage, n_blocks in enumerate(spec.blocks_per_stage):
            out_w, stride = w * 2**stage, 1 if stage == 0 else 2
            for i in range(n_blocks):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or in_w != out_w:
                    down = nn.Sequential(nn.Conv2d(in_w, out_w, 1, stride=s, bias=False),
                                         nn.BatchNorm2d(out_w))
                layers.append(BasicBlock(in_w, out_w, stride=s, downsample=down))
                in_w = out_w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = in_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _torchvision_resnet(spec: EncoderSpec) -> tuple[nn.Module, int]:
    """torchvision's ResNet with random weights, ``fc`` dropped; ``conv1`` swapped for the
    small-image stem, or for a 1-channel one, as the spec says."""
    net = getattr(torchvision.models, spec.arch)(weights=None)
    if spec.small_stem:
        net.conv1 = nn.Conv2d(spec.in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif spec.in_channels != 3:
        net.conv1 = nn.Conv2d(spec.in_channels, 64, 7, stride=2, padding=3, bias=False)
    feature_dim = int(net.fc.in_features)
    net.fc = nn.Identity()
    return net, feature_dim


class Classifier(nn.Module):
    """Encoder + linear head: ``[B, C, H, W]`` float -> ``[B, n_classes]`` logits."""

    def __init__(self, encoder: ResNetEncoder, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
