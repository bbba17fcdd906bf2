"""The views of labeled and pool images after pretraining, per kind of data
(``finetune.augment``): fine-tuning's mild views, and the pool stage's weak and strong pair.
Ours: they are recipes of the batched augmentation the engine already has
(``pipeline_tasks.ssl.views``).
"""

from __future__ import annotations

from pipeline_tasks.ssl.views import ViewAugment

# Labels are few, so fine-tuning sees mild augmentation: enough to stop 35 images being
# memorised in a few steps, weak enough that every view still shows its class.
_DIGITS = ViewAugment(crop_scale_min=0.8, rotation_degrees=10, brightness=0.2, contrast=0.2, noise_std=0.0,
                      erase_prob=0.0)
FINETUNE_AUGMENT = {
    "digits": _DIGITS,  # a mirrored 3 is not a 3
    "objects": _DIGITS.replace(hflip_prob=0.5),  # a mirrored shoe is a shoe
    "natural": ViewAugment(crop_scale_min=0.5, rotation_degrees=0, hflip_prob=0.5, brightness=0.2,
                           contrast=0.2, saturation=0.2, noise_std=0.0, erase_prob=0.0),
}


# FixMatch pairs a weak view (flip and shift) with a strong one (RandAugment). Ours: the weak view
# is fine-tuning's own (finetune.augment), so the pool stage flips and colours exactly where
# fine-tuning does; the strong view is a harder version of it (wider crops and rotations,
# stronger jitter, noise and erasing, as pretraining's views). finetune.augment: none keeps the
# digits pair: both methods need views.
_STRONG = ViewAugment(crop_scale_min=0.4, rotation_degrees=20, brightness=0.5, contrast=0.5, noise_std=0.08,
                      erase_prob=0.5)
STRONG = {
    "digits": _STRONG,
    "objects": _STRONG.replace(hflip_prob=0.5),
    "natural": _STRONG.replace(rotation_degrees=0, hflip_prob=0.5, jitter_prob=0.8, brightness=0.4,
                               contrast=0.4, saturation=0.4, hue=0.1, grayscale_prob=0.2, noise_std=0.0),
}


def pool_views(augment: str) -> tuple[ViewAugment, ViewAugment]:
    """``(weak, strong)`` views for ``finetune.augment`` (``digits``, ``objects``, ``natural``;
    ``none`` gets the digits pair). Raises ``KeyError`` for another name."""
    kind = "digits" if augment == "none" else augment
    return FINETUNE_AUGMENT[kind], STRONG[kind]
