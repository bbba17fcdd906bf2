"""Starting weights: an encoder this project saved, or a torchvision-format ResNet state dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline_tasks.models.encoders import Encoder, EncoderSpec
from pipeline_tasks.models.hub import resolve_init


def load_torchvision_weights(encoder: Encoder, state: dict[str, torch.Tensor],
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


# torchvision's ImageNet weights expect Normalize(mean, std) of [0, 1] pixels (the defaults of
# torchvision.transforms._presets.ImageClassification, which every ResNet weights' transforms use).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Normalisation = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel


def imagenet_normalisation(channels: int) -> Normalisation:
    """``(mean, std)`` of ImageNet for ``channels`` inputs; one channel (``conv1`` summed over
    RGB) takes the channels' averages, 0.449 and 0.226, so a grey pixel is normalised about as
    each colour channel was."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (round(sum(IMAGENET_MEAN) / 3, 3),), (round(sum(IMAGENET_STD) / 3, 3),)


def read_init(init_path: str | Path, allow_download: bool = False) -> dict[str, Any]:
    """The starting weights' file, loaded (``weights_only``): an encoder this project saved
    (``{"spec", "state_dict"}``) or a torchvision-format state dict. A ``torchvision:`` name is
    resolved to torch.hub's file first (``models.hub``). ``ValueError`` for a missing file or one
    that is not a PyTorch state dict."""
    path = Path(str(resolve_init(init_path, allow_download)))
    if not path.is_file():
        raise ValueError(f"{path}: pretrain.init weights file not found; download it first (nothing is "
                         "downloaded at run time) or set pretrain.init: null")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a PyTorch weights file ({type(exc).__name__}); pass a state dict "
                         "saved with torch.save") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict", blob), dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor); pass torchvision-format weights")
    return blob


def is_encoder_file(blob: dict[str, Any]) -> bool:
    """True for an encoder this project saved, False for torchvision-format weights."""
    return "spec" in blob and "state_dict" in blob


def init_normalisation(blob: dict[str, Any] | None, channels: int) -> Normalisation:
    """The input normalisation an encoder starting from ``blob`` needs: none without starting
    weights, the saved encoder's own, or ImageNet's for torchvision-format weights."""
    if blob is None:
        return (), ()
    if is_encoder_file(blob):
        spec = EncoderSpec.from_dict(blob["spec"])
        return spec.mean, spec.std
    return imagenet_normalisation(channels)


def apply_init(encoder: Encoder, blob: dict[str, Any], source: str | Path) -> list[str]:
    """Load ``blob`` (from ``read_init``) into ``encoder``; returns notes on what was (not) loaded."""
    if is_encoder_file(blob):
        if EncoderSpec.from_dict(blob["spec"]) != encoder.spec:
            raise ValueError(f"{source}: an encoder {blob['spec']} but the settings ask for "
                             f"{encoder.spec.to_dict()}; set pretrain.encoder/base_width/small_stem to "
                             "match it")
        encoder.load_state_dict(blob["state_dict"])
        return [f"initialised from {source}"]
    return [f"initialised from {source}", *load_torchvision_weights(encoder, blob.get("state_dict", blob),
                                                                    str(source))]


def load_init(encoder: Encoder, init_path: str | Path, allow_download: bool = False) -> list[str]:
    """Load starting weights (a file, or a ``torchvision:`` name) into ``encoder``; returns notes
    on what was (not) loaded."""
    return apply_init(encoder, read_init(init_path, allow_download), init_path)


def load_encoder(path: str | Path) -> Encoder:
    """Rebuild the encoder saved by ``pretrain_encoder`` (weights only, no pickled code)."""
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    encoder = Encoder(EncoderSpec.from_dict(blob["spec"]))
    encoder.load_state_dict(blob["state_dict"])
    return encoder
