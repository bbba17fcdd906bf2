"""Encoders and heads, built from torchvision's ResNets.

``compact`` (the default) is a ResNet for small images on a CPU: a 3x3 stride-1 stem and no
max-pool (a 7x7/2 stem plus pool would shrink 28 px digits to 7 px before the first block),
widths ``w, 2w, 4w, 8w`` with one ``BasicBlock`` per stage. At ``w=16`` it has 0.31M parameters
and runs ~1,200 views/s on a 2-core CPU; ``w=32`` is 3.7x slower there for no gain on mnist-5k.
``resnet18/34/50`` are torchvision's, optionally with the same small-image stem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def load_torchvision_weights(encoder: ResNetEncoder, state: dict[str, torch.Tensor],
                             source: str) -> list[str]:
    """Load a torchvision-format ResNet state dict (``conv1.weight``, ``layer1.0...``; ``fc``
    ignored) into ``encoder``; returns what was not loaded, and why. RGB ``conv1`` weights feed a
    1-channel stem summed over colours; a 7x7 ``conv1`` cannot feed the 3x3 small stem and is
    left random. Anything else that does not fit is a ``ValueError`` naming the keys."""
    if encoder.spec.arch == "compact":
        raise ValueError(f"{source}: torchvision weights need a torchvision encoder; set "
                         "pretrain.encoder to resnet18, resnet34 or resnet50")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    notes = []
    conv1 = state.get("conv1.weight")
    stem = encoder.body.get_submodule("conv1")
    assert isinstance(stem, nn.Conv2d)
    own = stem.weight
    if conv1 is not None and conv1.shape[1] == 3 and own.shape[1] == 1:
        state["conv1.weight"] = conv1 = conv1.sum(1, keepdim=True)
    if conv1 is not None and conv1.shape != own.shape:
        del state["conv1.weight"]
        notes.append(f"conv1 {tuple(conv1.shape)} does not fit the stem {tuple(own.shape)}: left random")
    missing, unexpected = encoder.body.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "conv1.weight" or not notes]
    if missing or unexpected:
        raise ValueError(f"{source}: not a {encoder.spec.arch} state dict (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); pass torchvision's {encoder.spec.arch} weights "
                         "or set pretrain.encoder to match them")
    return notes


def projection_head(in_dim: int, out_dim: int = 128) -> nn.Module:
    """SimCLR's 2-layer MLP: ``[B, in_dim] -> [B, out_dim]``; dropped after pretraining."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True),
                         nn.Linear(in_dim, out_dim))


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


def build_classifier(spec: EncoderSpec, n_classes: int) -> Classifier:
    return Classifier(ResNetEncoder(spec), n_classes)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; set device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_init(encoder: ResNetEncoder, init_path: str | Path) -> list[str]:
    """Load starting weights into ``encoder``; returns notes on what was (not) loaded."""
    spec, path = encoder.spec, Path(init_path)
    if not path.is_file():
        raise ValueError(f"{path}: pretrain.init weights file not found; download it first (nothing is "
                         "downloaded at run time) or set pretrain.init: null")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a PyTorch weights file ({type(exc).__name__}); pass a state dict "
                         "saved with torch.save") from exc
    if isinstance(blob, dict) and "spec" in blob and "state_dict" in blob:
        if EncoderSpec.from_dict(blob["spec"]) != spec:
            raise ValueError(f"{path}: an encoder {blob['spec']} but the settings ask for {spec.to_dict()}; "
                             "set pretrain.encoder/base_width/small_stem to match it")
        encoder.load_state_dict(blob["state_dict"])
        return [f"initialised from {path}"]
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor); pass torchvision-format weights")
    return [f"initialised from {path}", *load_torchvision_weights(encoder, state, str(path))]


def load_encoder(path: str | Path) -> ResNetEncoder:
    """Rebuild the encoder saved by ``pretrain_encoder`` (weights only, no pickled code)."""
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    encoder = ResNetEncoder(EncoderSpec.from_dict(blob["spec"]))
    encoder.load_state_dict(blob["state_dict"])
    return encoder
