"""Encoders and heads: one interface, a body per family (compact, torchvision, timm).

``compact`` (the default) is a ResNet for small images on a CPU: a 3x3 stride-1 stem and no
max-pool (a 7x7/2 stem plus pool would shrink 28 px digits to 7 px before the first block),
widths ``w, 2w, 4w, 8w`` with one ``BasicBlock`` per stage. At ``w=16`` it has 0.31M parameters
and runs ~1,200 views/s on a 2-core CPU; ``w=32`` is 3.7x slower there for no gain on mnist-5k.
``resnet18/34/50`` are torchvision's, optionally with the same small-image stem.
``timm:<name>`` is any model of ``timm.list_models()``, built by
``timm.create_model(name, pretrained=False, num_classes=0, in_chans=C)``: its pooled features
without the classifier (timm imported only for such an encoder).

Every path feeds the encoder pixels scaled to [-1, 1] (``inference.to_float``, the SSL views);
an encoder whose spec carries a ``mean`` and ``std`` (ImageNet's for torchvision weights, the
weights' ``pretrained_cfg`` for timm's) turns them into ``(pixel / 255 - mean) / std`` itself,
as its first operation, so training, evaluation and the served model cannot disagree on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from pipeline_tasks.recipes import ENCODERS, timm_name

# Under this many pixels a side, ``small_stem: auto`` takes the 3x3 stride-1 stem: torchvision's
# 7x7/2 stem and max-pool would leave 8 px of a 32 px image for layer1 (solo-learn uses the small
# stem for CIFAR's 32 px and the ImageNet stem from STL-10's 96 px up).
SMALL_IMAGE = 96


def resolve_small_stem(setting: bool | str, image_size: int, arch: str) -> bool:
    """``pretrain.small_stem`` for ``image_size`` px inputs: ``auto`` is on under ``SMALL_IMAGE``
    px; ``compact`` always has the small stem, a timm model always its own."""
    if arch == "compact":
        return True
    if timm_name(arch):
        return False
    return image_size < SMALL_IMAGE if setting == "auto" else bool(setting)


def family(arch: str) -> str:
    """``compact``, ``torchvision`` (``resnet18|34|50``) or ``timm`` (``timm:<name>``); a
    ``ValueError`` for anything else."""
    if arch == "compact":
        return "compact"
    if arch in ENCODERS:
        return "torchvision"
    if timm_name(arch):
        return "timm"
    raise ValueError(f"unknown encoder {arch!r}: choose {', '.join(ENCODERS)} or timm:<model name>")


@dataclass(frozen=True)
class EncoderSpec:
    """What rebuilds an encoder, saved in every encoder and classifier file."""

    in_channels: int = 1
    base_width: int = 16  # compact only
    blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1)  # compact only
    arch: str = "compact"  # compact, resnet18|34|50 or timm:<name>
    small_stem: bool = True  # torchvision ResNets: 3x3 stride-1 conv1 and no max-pool
    # Input normalisation, per channel, of pixels in [0, 1] (torchvision's Normalize); () keeps
    # the [-1, 1] scaling (every encoder saved before these fields existed).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderSpec:
        return cls(int(d["in_channels"]), int(d["base_width"]), tuple(d["blocks_per_stage"]),
                   str(d.get("arch", "compact")), bool(d.get("small_stem", True)),
                   tuple(float(v) for v in d.get("mean", ())), tuple(float(v) for v in d.get("std", ())))


class Encoder(nn.Module):
    """``[B, C, H, W]`` float in [-1, 1] -> ``[B, feature_dim]`` features (global average pooled),
    whatever the family of ``spec.arch``; ``body`` is the family's network.

    Weights and activations are channels-last (NHWC): oneDNN's and cuDNN's faster convolution
    layout. On this project's 2-core CPU a training step of the compact encoder runs 1.3-1.6x
    faster in fp32 (``bench/channels_last.py``). ``ValueError`` for an invalid spec."""

    input_scale: torch.Tensor | None
    input_shift: torch.Tensor | None

    def __init__(self, spec: EncoderSpec = EncoderSpec()) -> None:
        super().__init__()
        if (spec.in_channels not in (1, 3) or spec.base_width < 1 or not spec.blocks_per_stage
                or len(spec.mean) != len(spec.std) or len(spec.mean) not in (0, spec.in_channels)
                or min(spec.std, default=1) <= 0):
            raise ValueError(f"invalid encoder spec: {spec}")
        self.spec = spec
        self._normalisation(spec.mean, spec.std)
        self.body, self.feature_dim = BODIES[family(spec.arch)](spec)
        subsample_strided_pointwise(self.body)
        self.to(memory_format=torch.channels_last)

    def _normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """``x * input_scale + input_shift`` on ``x`` in [-1, 1] is ``(pixel - mean) / std`` on the
        pixel ``(x + 1) / 2`` in [0, 1]. Buffers that are not persistent: the spec holds the
        numbers, and state dicts keep the keys they always had."""
        scale = [0.5 / s for s in std]
        shift = [(0.5 - m) / s for m, s in zip(mean, std, strict=True)]
        self.register_buffer("input_scale", torch.tensor(scale).view(1, -1, 1, 1) if scale else None,
                             persistent=False)
        self.register_buffer("input_shift", torch.tensor(shift).view(1, -1, 1, 1) if shift else None,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None and self.input_shift is not None:
            x = x * self.input_scale + self.input_shift
        return self.body(x.contiguous(memory_format=torch.channels_last))


def _compact(spec: EncoderSpec) -> tuple[nn.Module, int]:
    """The compact ResNet: 3x3 stride-1 stem, ``blocks_per_stage`` BasicBlocks at widths
    ``w, 2w, 4w, 8w``, pooled."""
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
                down = nn.Sequential(nn.Conv2d(in_w, out_w, 1, stride=s, bias=False), nn.BatchNorm2d(out_w))
            layers.append(BasicBlock(in_w, out_w, stride=s, downsample=down))
            in_w = out_w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), in_w


def _torchvision(spec: EncoderSpec) -> tuple[nn.Module, int]:
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


def _timm(spec: EncoderSpec) -> tuple[nn.Module, int]:
    """timm's model with random weights and no classifier: its pooled pre-logits features,
    ``head_hidden_size`` wide where the model has a layer between pooling and classifier
    (MobileNetV3: 1280 over 960 channels), else ``num_features``. ``ValueError`` for a name
    timm does not know."""
    import timm  # noqa: PLC0415 - about 1.5 s, paid only by timm encoders

    name = str(timm_name(spec.arch))
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=spec.in_channels)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(f"encoder {spec.arch}: {exc}") from exc
    width: Any = getattr(net, "head_hidden_size", None) or net.num_features
    return net, int(width)


BODIES = {"compact": _compact, "torchvision": _torchvision, "timm": _timm}


class Classifier(nn.Module):
    """Encoder + linear head: ``[B, C, H, W]`` float -> ``[B, n_classes]`` logits."""

    def __init__(self, encoder: Encoder, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class SubsampledPointwise(nn.Conv2d):
    """A 1x1 convolution with stride ``s`` and no padding that, on a CPU batch the thread count
    does not divide, is computed as the stride-1 convolution of every ``s``-th pixel: the same
    numbers, the same parameters and state-dict keys.

    Why: PyTorch 2.14.1's oneDNN kernel for the backward pass of a channels-last 1x1 stride-2
    convolution corrupts the heap when the batch is not a multiple of the CPU threads (on 2
    threads every odd batch: ``free(): invalid next size``, exit 134 or 139; on 3 threads 2, 4,
    8, 10, ...); every ResNet's downsample path is one, and a fine-tuning batch is as odd as the
    user's labels. The subsampled form takes another kernel; the usual form is kept where it is
    safe, since it is about 10% faster for a training step of the compact encoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.shape[0] % torch.get_num_threads() == 0:
            return super().forward(x)
        s = self.stride
        return nn.functional.conv2d(x[:, :, ::s[0], ::s[1]], self.weight, self.bias, 1, 0, self.dilation,
                                    self.groups)


def subsample_strided_pointwise(module: nn.Module) -> None:
    """Swap, in place, every 1x1 convolution with a stride and no padding in ``module`` for a
    ``SubsampledPointwise`` holding the same weights."""
    for name, child in list(module.named_children()):
        if (type(child) is nn.Conv2d and child.kernel_size == (1, 1) and child.padding == (0, 0)
                and child.stride != (1, 1)):
            stride, dilation = child.stride, child.dilation
            swapped = SubsampledPointwise(child.in_channels, child.out_channels, 1, (stride[0], stride[1]), 0,
                                          (dilation[0], dilation[1]), child.groups, child.bias is not None)
            swapped.load_state_dict(child.state_dict())
            setattr(module, name, swapped)
        else:
            subsample_strided_pointwise(child)

