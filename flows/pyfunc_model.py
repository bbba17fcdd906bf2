"""The registered model, as MLflow "models from code": this file is copied into the model.

Input: uint8 images ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]`` (RGB) at the trained size,
as ``np.stack`` of PIL images gives them. Output: a DataFrame with ``label`` and ``confidence``.
It imports only mlflow, numpy, pandas, torch and ``pipeline_tasks`` (shipped as model code),
so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work outside this project.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel


class ImageClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        from pipeline_tasks.finetune import load_classifier

        self.model, self.classes = load_classifier(context.artifacts["classifier"])

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # No type hints here: MLflow would read them as a (list-based) schema; ours is the
        # tensor signature logged with the model.
        from pipeline_tasks.finetune import predict_logits

        x = np.asarray(model_input, dtype=np.uint8)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"expected images [N, H, W] or [N, H, W, C], got shape {x.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        probs = torch.softmax(predict_logits(self.model, batch, torch.device("cpu")), dim=1)
        confidence, index = probs.max(dim=1)
        return pd.DataFrame({"label": [self.classes[i] for i in index.tolist()],
                             "confidence": confidence.numpy().astype(np.float64)})


mlflow.models.set_model(ImageClassifier())
