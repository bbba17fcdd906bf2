"""The registered models, as MLflow "models from code": this file is copied into each model.

Input: a DataFrame (or ``{"image": [...]}``) with a column ``image`` whose cells are
base64-encoded image files (PNG, JPEG, ...; what a REST client sends), raw file bytes, or pixel
arrays ``[H, W]`` / ``[H, W, C]`` of any size, dtype and mode. File paths only when the process
that loads the model has ``PRETRAINFLOW_ALLOW_PATHS=1`` (local batch use; a request cannot turn
it on); otherwise a path is refused whether or not the file exists. Images over
``PRETRAINFLOW_MAX_PIXELS`` (default 50,000,000) are refused from their header, before decoding.
The model applies the training recipe itself (mode conversion, resize to the trained size), so
callers send images as they are.

Output: one row per input row, in order, always; a row that cannot be read has a one-line
``error`` (``row 3: base64 text is not an image (...)``) and neutral predictions; a good row has
``error`` ``""``. No bad row makes the model raise, so a REST client never gets a stack trace.
For a classifier (artifact ``classifier``): ``label`` (class index; -1 for a bad row),
``class_name`` (``""``), ``confidence`` and ``prob_<class>`` for every class (0.0), ``error``.
For an encoder (artifact ``encoder``, registered as ``pretrainflow-encoder``): ``embedding``,
the L2-normalised feature vector as a list of floats (empty for a bad row), ``error``.

It imports only mlflow, numpy, pandas, pillow, torch and ``pipeline_tasks`` (shipped as model
code), so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work outside this project.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from mlflow.types.type_hints import TypeFromExample


class ImageModel(PythonModel):
    def load_context(self, context: Any) -> None:
        import json
        import warnings

        from PIL import Image

        from pipeline_tasks.data.inputs import InputPolicy
        from pipeline_tasks.models.classifier import classifier_recipe, load_classifier
        from pipeline_tasks.models.weights import load_encoder
        from pipeline_tasks.runtime import resolve_runtime

        # read once, here: the operator's environment decides what requests may carry
        self.policy = InputPolicy.from_env()
        # the policy's pixel limit refuses big images; Pillow's warning (over ~89 MP) only repeats it
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

        # the GPU when there is one (quietly the CPU otherwise: a server is not a training run)
        self.runtime = resolve_runtime("cuda" if torch.cuda.is_available() else "cpu", "auto", "serve")

        if "classifier" in context.artifacts:
            path = context.artifacts["classifier"]
            self.model, self.classes = load_classifier(path)
            self.recipe = classifier_recipe(path)
        else:
            self.model, self.classes = load_encoder(context.artifacts["encoder"]).eval(), []
            with open(context.artifacts["recipe"]) as f:
                self.recipe = json.load(f)

    def predict(self, context: Any, model_input: TypeFromExample,  # type: ignore[valid-type]
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        # TypeFromExample: the input is what the logged example is (a DataFrame with a column
        # `image`), so MLflow neither invents a second schema from the hint nor warns. `params`
        # are ignored: nothing in a request changes what the model accepts.
        from pipeline_tasks.data.inputs import prepare_rows
        from pipeline_tasks.models.inference import predict_logits

        r = self.recipe
        prepared = prepare_rows(model_input, r["image_size"], r["channels"], r.get("resize", "squash"),
                                self.policy)
        rt = self.runtime
        out = predict_logits(self.model.to(rt.device), prepared.images, rt.device, 256, rt.dtype) \
            if len(prepared.rows) else torch.empty(0, 1)
        n, rows = len(prepared.errors), prepared.rows
        frame = self._classes(out, n, rows) if self.classes else self._embeddings(out, n, rows)
        frame["error"] = prepared.errors
        return frame

    def _classes(self, logits: torch.Tensor, n: int, rows: np.ndarray) -> pd.DataFrame:
        """``n`` rows of label, class_name, confidence, prob_<class>: the good ``rows`` from
        ``logits`` ``[len(rows), n_classes]``, the others -1, "" and 0.0."""
        probs = np.zeros((n, len(self.classes)))
        label = np.full(n, -1, dtype=np.int64)
        if len(rows):
            probs[rows] = torch.softmax(logits, dim=1).numpy()
            label[rows] = probs[rows].argmax(1)
        frame = pd.DataFrame({"label": label,
                              "class_name": [self.classes[i] if i >= 0 else "" for i in label],
                              "confidence": probs.max(1, initial=0.0).astype(np.float64)})
        for j, name in enumerate(self.classes):
            frame[f"prob_{name}"] = probs[:, j].astype(np.float64)
        return frame

    @staticmethod
    def _embeddings(feats: torch.Tensor, n: int, rows: np.ndarray) -> pd.DataFrame:
        """``n`` rows of ``embedding``: L2-normalised features for the good ``rows``, empty otherwise."""
        vectors = torch.nn.functional.normalize(feats, dim=1).numpy().astype(np.float64)
        out: list[np.ndarray] = [np.zeros(0) for _ in range(n)]
        for k, i in enumerate(rows):
            out[i] = vectors[k]
        return pd.DataFrame({"embedding": out})


mlflow.models.set_model(ImageModel())
