"""The pretrained encoder in the registry: registered by every pretraining run as
``pretrainflow-encoder`` (a pyfunc mapping images to L2-normalised embeddings), and downloaded
again when a run starts from it (``pretrain.init: models:/pretrainflow-encoder/3``)."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from flows.registry.models import classifier_digest, log_registered_model, same_version

ENCODER_MODEL = "pretrainflow-encoder"


def register_encoder(encoder_path: str | Path, preprocessed_dir: str | Path,
                     name: str = ENCODER_MODEL) -> str:
    """Register the pretrained encoder (a pyfunc that maps images to embeddings) inside the
    active run, for reuse as ``pretrain.init``; an identical encoder is not registered again.
    Returns the version."""
    client, digest = mlflow.MlflowClient(), classifier_digest(encoder_path)
    same = same_version(client, name, digest)
    if same is not None:
        return str(same.version)
    artifacts = {"encoder": str(encoder_path), "recipe": str(Path(preprocessed_dir) / "splits.json")}
    # the newest is models:/NAME/latest (MLflow reserves the alias "latest")
    return log_registered_model(artifacts, None, Path(preprocessed_dir), name, {"classifier_digest": digest},
                                artifact_path="encoder")


def download_encoder(uri: str) -> Path:
    """A registered encoder (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) as a local
    ``encoder.pt``; ``ValueError`` when it cannot be found."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as exc:
        raise ValueError(f"pretrain.init {uri}: {str(exc).splitlines()[0]}; check the name and version "
                         "under Models in the MLflow UI") from exc
    found = sorted(local.rglob("encoder.pt"))
    if not found:
        raise ValueError(f"pretrain.init {uri}: not an encoder registered by pretrainflow (no encoder.pt)")
    return found[0]
