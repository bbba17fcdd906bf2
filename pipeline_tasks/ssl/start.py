"""Where pretraining starts (``pretrain.start``): from scratch, or from ImageNet's weights (the
packaged start, EfficientNet-Lite0), decided on the run's own validation labels.

Which is better depends on the data: on a small RGB icon set ImageNet features with a logistic
regression beat the pixels by 13 points, on Fashion-MNIST they lost to them. ``auto`` therefore
probes, cheaply, before anything trains: a logistic regression and a k-NN (``references``) on
the ImageNet encoder's features of the run's training labels, against the same on the pixels,
each scored on the run's validation labels; ImageNet is taken when its best beats the pixels'
best by ``START_MARGIN``. On 1-channel data ``auto`` starts from scratch without probing
(ImageNet's weights are for colour photos). ``pretrain.init`` set by the user is the start, as
it says. Ours: the decision rule is the product's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_tasks.config import FinetuneConfig, PretrainConfig
from pipeline_tasks.data.cache import load_split_labels, open_images, recipe
from pipeline_tasks.evaluation.references import Split, best_of, reference_points
from pipeline_tasks.finetune.subsets import labeled_subset, stratified_subset
from pipeline_tasks.models.inference import embed
from pipeline_tasks.recipes import IMAGENET_START
from pipeline_tasks.runtime import resolve_runtime
from pipeline_tasks.ssl.start_record import PROBE_FILE, START_FILE, StartRecord

# ImageNet must beat the pixels by this much on validation: one image in 50 (with 100 validation
# labels, a 2-point lead is two images, not one that a tie-break could flip).
START_MARGIN = 0.02


def _labeled(preprocessed_dir: Path, cfg: FinetuneConfig) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``((train images, labels), (val images, labels))``: the labels fine-tuning will use."""
    out = []
    for split in ("train", "val"):
        y = torch.from_numpy(load_split_labels(preprocessed_dir, split))
        rows = (labeled_subset(y, cfg.label_fraction, cfg.seed, cfg.labels_per_class) if split == "train"
                else stratified_subset(y, cfg.seed, per_class=cfg.val_per_class)).numpy()
        out.append((np.array(open_images(preprocessed_dir, split)[rows]), y.numpy()[rows]))
    return tuple(out)


def probe(preprocessed_dir: Path, pretrain: PretrainConfig, finetune: FinetuneConfig) -> dict[str, float]:
    """Validation accuracy of the best of a logistic regression and a k-NN on the pixels and on
    the ImageNet start's features, both fitted on the run's training labels."""
    from pipeline_tasks.ssl.run import build_encoder  # noqa: PLC0415 - torch, timm

    (x, y), (vx, vy) = _labeled(preprocessed_dir, finetune)
    size, channels = int(recipe(preprocessed_dir)["image_size"]), int(x.shape[1])
    cfg = pretrain.model_copy(update={"encoder": IMAGENET_START[0], "init": IMAGENET_START[1]})
    encoder, _ = build_encoder(cfg, channels, cfg.init, size)
    device = resolve_runtime(pretrain.device, "fp32", "pretrain").device

    def features(images: np.ndarray) -> np.ndarray:
        return embed(encoder.to(device), images, device, 128, normalize=False).cpu().numpy()

    pixels = (Split(x.reshape(len(x), -1) / 255.0, y), Split(vx.reshape(len(vx), -1) / 255.0, vy))
    imagenet = (Split(features(x), y), Split(features(vx), vy))
    found = reference_points((*pixels, pixels[1]), (*imagenet, imagenet[1]))
    best_pixels, best_imagenet = best_of(found, "pixels"), best_of(found, "encoder")
    assert best_pixels is not None and best_imagenet is not None
    return {"pixels_val_accuracy": best_pixels.val_accuracy,
            "imagenet_val_accuracy": best_imagenet.val_accuracy,
            "train_labels": float(len(y)), "val_labels": float(len(vy))}


def choose_start(preprocessed_dir: str | Path, pretrain: PretrainConfig, finetune: FinetuneConfig,
                 out_dir: str | Path) -> StartRecord:
    """Decide the start as the module says and write ``out_dir/start.json`` (the decision) and
    ``out_dir/probe.json`` (why, with the probe's numbers)."""
    pre = Path(preprocessed_dir)
    if pretrain.init:
        record = StartRecord("init", pretrain.encoder, pretrain.init,
                             f"pretrain.init is set: {pretrain.init}")
    elif pretrain.start == "auto" and int(recipe(pre)["channels"]) == 3:
        record = _decided(probe(pre, pretrain, finetune), pretrain)
    elif pretrain.start == "imagenet":
        record = StartRecord("imagenet", *IMAGENET_START, "pretrain.start: imagenet")
    else:
        why = "pretrain.start: scratch" if pretrain.start == "scratch" else \
            "pretrain.start: auto on 1-channel images (ImageNet's weights are for colour photos)"
        record = StartRecord("scratch", pretrain.encoder, None, why)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / START_FILE).write_text(record.decision + "\n")
    (Path(out_dir) / PROBE_FILE).write_text(json.dumps({"reason": record.reason, "probe": record.probe},
                                                       indent=2) + "\n")
    return record


def _decided(found: dict[str, Any], pretrain: PretrainConfig) -> StartRecord:
    imagenet, pixels = found["imagenet_val_accuracy"], found["pixels_val_accuracy"]
    said = (f"on {int(found['val_labels'])} validation labels, ImageNet features {imagenet:.3f} against "
            f"pixels {pixels:.3f} (a logistic regression or k-NN on {int(found['train_labels'])} training "
            f"labels; ImageNet needs a lead of {START_MARGIN:.2f})")
    if imagenet >= pixels + START_MARGIN:
        return StartRecord("imagenet", *IMAGENET_START, f"auto: imagenet, {said}", found)
    return StartRecord("scratch", pretrain.encoder, None, f"auto: scratch, {said}", found)
