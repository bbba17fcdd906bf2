"""The champion, re-scored on this run's test images: never on an image it saw.

Every registered classifier carries ``seen_images.txt`` (``pipeline_tasks.data.seen``: every
image it was trained, pretrained or selected on, with its hashes) inside its model. To compare,
the champion's classifier is downloaded from the registry and run, in batches on the GPU when
there is one, on this run's test images minus the ones it saw and their copies, exact or near by
the one near-copy rule; the challenger's predictions on the same images come from the evaluate
stage. The gate then tests the difference (``flows.registry.gate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from flows.registry.gate import Comparison
from pipeline_tasks.data.batches import Rows
from pipeline_tasks.data.cache import open_images, recipe
from pipeline_tasks.data.decode import load_image
from pipeline_tasks.data.nearcopy import copies_of
from pipeline_tasks.data.seen import read_seen
from pipeline_tasks.evaluation.compare import mcnemar, paired_bootstrap
from pipeline_tasks.models.classifier import classifier_recipe, load_classifier
from pipeline_tasks.models.inference import predict_logits
from pipeline_tasks.runtime import resolve_runtime


def _download(name: str, version: str) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    except MlflowException as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"champion version {version} cannot be downloaded ({first})") from exc


def _artifacts(local: Path) -> dict[str, Path]:
    """The pyfunc's artifacts by name (``classifier``, ``seen_images``), as its MLmodel lists them."""
    flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    return {key: local / value["path"] for key, value in flavor.get("artifacts", {}).items()}


def _predict(classifier: Path, test: pd.DataFrame, keep: np.ndarray, preprocessed_dir: Path,
             data_dir: Path) -> np.ndarray:
    """Class names the champion predicts for ``test`` rows ``keep``: from the cache when its input
    recipe is this run's, else from the original files through its own recipe."""
    model, classes = load_classifier(classifier)
    own = classifier_recipe(classifier)
    runtime = resolve_runtime("cpu" if not torch.cuda.is_available() else "auto", "auto", "register")
    if {k: own.get(k) for k in ("image_size", "channels", "resize")} == recipe(preprocessed_dir):
        images = Rows.select(open_images(preprocessed_dir, "test"), np.flatnonzero(keep))
    else:  # the original files, decoded a batch at a time
        size, channels, resize = own["image_size"], own["channels"], own.get("resize", "crop")
        paths = test.loc[keep, "path"].to_numpy()
        images = Rows(len(paths), lambda at: np.stack([load_image(data_dir / p, size, channels, resize)
                                                       for p in paths[at]]))
    logits = predict_logits(model.to(runtime.device), images, runtime.device, 256, runtime.dtype)
    return np.array(classes)[logits.argmax(1).numpy()]


def compare_with_champion(name: str, champion: Any, metric: str, preprocessed_dir: Path, data_dir: Path,
                          predictions: pd.DataFrame, classes: list[str]) -> Comparison | str:
    """The paired comparison of this run's model (``predictions``: sha256, actual, predicted per
    test image) with ``champion`` (an MLflow model version) on the test images it never saw, or
    a sentence saying why they cannot be compared."""
    champion_classes = tuple(json.loads(champion.tags.get("classes", "[]")))
    if list(champion_classes) != classes:
        return (f"a different task: classes {classes} against champion version {champion.version}'s "
                f"{list(champion_classes)}; it never takes this model's alias: set another "
                "register.model_name")
    artifacts = _artifacts(_download(name, str(champion.version)))
    seen_file, classifier = artifacts.get("seen_images"), artifacts.get("classifier")
    if seen_file is None or classifier is None:
        return (f"champion version {champion.version} records no list of the images it was trained on, so "
                "it cannot be scored without the risk of scoring it on them; move the alias by hand if you "
                "trust it, or register under another register.model_name")
    test = _test_rows(preprocessed_dir, predictions)
    keep = ~copies_of(test, read_seen(seen_file))
    if not keep.any():
        return f"every test image of this run was seen by champion version {champion.version}"
    theirs = _predict(classifier, test, keep, preprocessed_dir, data_dir)
    paired = _paired(test[keep], theirs, metric, classes)
    note = "" if metric in champion.tags else (f"champion version {champion.version} had no {metric} tag "
                                               "(register.metric changed since): re-scored here")
    return Comparison(str(champion.version), champion_classes, paired, int((~keep).sum()), note)


def _test_rows(preprocessed_dir: Path, predictions: pd.DataFrame) -> pd.DataFrame:
    splits = pd.read_csv(preprocessed_dir / "splits.csv", dtype=str, keep_default_na=False)
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    if list(test["sha256"]) != list(predictions["sha256"]):
        raise ValueError("the evaluate stage's predictions are not of this test split: run evaluate again")
    return test.assign(predicted=predictions["predicted"].to_numpy())


def _paired(test: pd.DataFrame, champion_predicted: np.ndarray, metric: str, classes: list[str]) -> Any:
    y, ours = test["label"].to_numpy(), test["predicted"].to_numpy()
    if metric == "test_accuracy":
        return mcnemar(ours == y, champion_predicted == y)
    index = {c: i for i, c in enumerate(classes)}
    to_int = np.vectorize(index.__getitem__)
    return paired_bootstrap(to_int(y), to_int(ours), to_int(champion_predicted), len(classes))
