"""Starting weights: an encoder this project saved, or a torchvision-format ResNet state dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline_tasks.models.encoders import EncoderSpec, ResNetEncoder


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
