"""Things named in settings: encoders (``pretrain.encoder: timm:convnext_atto``), standard
weights (``pretrain.init: torchvision:resnet50``) and the presets of ``pretrainflow run --preset
NAME``. Standard library only: the CLI reads it before
anything heavy, and ``config`` validates names with it.
"""

from __future__ import annotations

TORCHVISION = "torchvision:"
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")  # the encoders weights by name can start
ENCODERS = ("compact", *TORCHVISION_ARCHS)  # and timm:<any name in timm.list_models()>
TIMM = "timm:"


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


# A preset is a list of --set overrides applied over the params file and under each --set.
# photos: RGB photographs from ImageNet weights. 224 px views cut from a 256 px cache (as
# torchvision's ImageNet recipe crops 224 from images resized to 256), the ImageNet stem
# (small_stem auto is off at 224 px), SimCLR's natural-image views, flips and colour in
# fine-tuning. ImageNet's input normalisation follows from the torchvision weights.
PRESETS: dict[str, tuple[str, ...]] = {
    "photos": (
        "data.image_size=224", "data.cache_size=256", "data.channels=3",
        "pretrain.encoder=resnet50", "pretrain.init=torchvision:resnet50", "pretrain.small_stem=auto",
        "pretrain.augment=simclr", "finetune.augment=natural",
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
