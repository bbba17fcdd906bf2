"""A classifier on disk: weights, class names and the input recipe, loaded without pickled code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec
from pipeline_tasks.storage import save_atomic


def save_classifier(model: Classifier, classes: tuple[str, ...] | list[str], preprocess: dict[str, Any],
                    path: Path) -> None:
    """Weights plus what a user of the file needs: class names and the input recipe
    (``image_size``, ``channels``, ``resize``; ``preprocess.recipe``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_atomic({"spec": model.encoder.spec.to_dict(), "classes": list(classes), "state_dict": state,
                 "preprocess": dict(preprocess)}, path)


def load_classifier(path: str | Path) -> tuple[Classifier, list[str]]:
    """Rebuild the classifier written by ``finetune_classifier`` (weights only), of any encoder
    family (its spec names it)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = Classifier(Encoder(EncoderSpec.from_dict(blob["spec"])), len(blob["classes"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), list(blob["classes"])


def classifier_recipe(path: str | Path) -> dict[str, Any]:
    """``{"image_size", "channels", "resize"}``: how the classifier's inputs are made."""
    return dict(torch.load(path, map_location="cpu", weights_only=True)["preprocess"])
