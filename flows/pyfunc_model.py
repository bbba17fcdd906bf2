"""The registered models, as MLflow "models from code": this file is copied into each model.

Input: a DataFrame (or ``{"image": [...]}``) with a column ``image`` whose cells are file
paths, base64-encoded image files (PNG, JPEG, ...; what a REST client sends), or pixel arrays
``[H, W]`` / ``[H, W, C]`` of any size, dtype and mode. The model applies the training recipe
itself (mode conversion, resize to the trained size), so callers send images as they are.

Output, for a classifier (artifact ``classifier``): one row per image with ``label`` (class
index), ``class_name``, ``confidence`` and ``prob_<class>`` for every class. For an encoder
(artifact ``encoder``, registered as ``pretrainflow-encoder``): one row per image with
``embedding``, the L2-normalised feature vector as a list of floats.

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

        from pipeline_tasks.models.classifier import classifier_recipe, load_classifier
        from pipeline_tasks.models.weights import load_encoder
        from pipeline_tasks.runtime import resolve_runtime

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
        # `image`), so MLflow neither invents a second schema from the hint nor warns.
        from pipeline_tasks.data.inputs import prepare_batch
        from pipeline_tasks.models.inference import predict_logits

        r = self.recipe
        batch = torch.from_numpy(prepare_batch(model_input, r["image_size"], r["channels"],
                                               r.get("resize", "squash")))
        rt = self.runtime
        out = predict_logits(self.model.to(rt.device), batch, rt.device, 256, rt.dtype) if len(batch) \
            else torch.empty(0, 1)
        if not self.classes:  # an encoder: its features
            feats = torch.nn.functional.normalize(out, dim=1).numpy().astype(np.float64)
            return pd.DataFrame({"embedding": list(feats)})
        if not len(batch):
            return pd.DataFrame(columns=["label", "class_name", "confidence"])
        probs = torch.softmax(out, dim=1).numpy()
        index = probs.argmax(1)
        frame = pd.DataFrame({"label": index.astype(np.int64),
                              "class_name": [self.classes[i] for i in index],
                              "confidence": probs.max(1).astype(np.float64)})
        for j, name in enumerate(self.classes):
            frame[f"prob_{name}"] = probs[:, j].astype(np.float64)
        return frame


mlflow.models.set_model(ImageModel())
