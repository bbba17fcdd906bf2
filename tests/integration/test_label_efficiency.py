"""The product's promise, on the real mnist-5k digits with the default recipe (params.yaml):
with 1% of the labels, the pretrained model beats the same network trained from scratch with
the same labels and steps, in the mean over 3 seeds. About 5 minutes on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_tasks.config import load_config
from pipeline_tasks.data.datasets import write_builtin
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.preprocess import preprocess_data
from pipeline_tasks.evaluation.sweep import label_sweep, summarize
from pipeline_tasks.ssl.trainer import pretrain_encoder
from tests.conftest import PARAMS

pytestmark = pytest.mark.slow


def test_pretraining_beats_scratch_at_one_percent_labels(tmp_path: Path) -> None:
    cfg = load_config(PARAMS, ["pretrain.device=cpu", "finetune.device=cpu"])
    write_builtin("mnist-5k", tmp_path / "data")
    build_manifest(tmp_path / "data").to_csv(tmp_path / "manifest.csv", index=False)
    pre = preprocess_data(tmp_path / "manifest.csv", tmp_path / "data", cfg.data, cfg.preprocess,
                          tmp_path / "pre")
    encoder = pretrain_encoder(pre.out_dir, cfg.pretrain, tmp_path / "pt")
    rows = label_sweep(pre.out_dir, encoder.encoder_path, pre.classes, cfg.finetune, [0.01], [0, 1, 2],
                       [cfg.finetune.mode, "scratch"])
    table = summarize(rows).set_index("mode")
    pretrained = table.loc[cfg.finetune.mode]
    assert rows["train_labels"].max() <= 40 and pretrained["count"] == 3
    assert pretrained["mean"] > 0.8, table  # it learned: 10 classes from ~35 labels
    assert pretrained["lift_points"] > 0, table  # and beat scratch (mean of the 3 seeds)
    print(table)
