"""The product's promise, on the real mnist-5k digits with 4 labels per class: the pretrained
model beats the same network trained from scratch with the same labels and steps, and the pool
stage beats the model it started from, in the mean over 3 seeds (the default recipe of
params.yaml, pretraining and the pool stage shortened to keep the test to a few minutes on a
2-core CPU: FixMatch's validation accuracy jumps within its first 40-80 steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_tasks.config import load_config
from pipeline_tasks.data.datasets import write_builtin
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.preprocess import preprocess_data
from pipeline_tasks.evaluation.sweep import Sweep, label_sweep, summarize
from pipeline_tasks.ssl.trainer import pretrain_encoder
from tests.conftest import PARAMS

pytestmark = pytest.mark.slow
EPOCHS = 15  # of pretraining: enough for the lift, short enough for CI
POOL_STEPS = 60


def test_pretraining_and_the_pool_both_pay_off_with_four_labels_per_class(tmp_path: Path) -> None:
    cfg = load_config(PARAMS, ["pretrain.device=cpu", "finetune.device=cpu", "pool.device=cpu",
                               f"pretrain.epochs={EPOCHS}", f"pool.steps={POOL_STEPS}"])
    write_builtin("mnist-5k", tmp_path / "data")
    build_manifest(tmp_path / "data").to_csv(tmp_path / "manifest.csv", index=False)
    pre = preprocess_data(tmp_path / "manifest.csv", tmp_path / "data", cfg.data, cfg.preprocess,
                          tmp_path / "pre")
    encoder = pretrain_encoder(pre.out_dir, cfg.pretrain, tmp_path / "pt")
    sweep = Sweep(Path(pre.out_dir), Path(encoder.encoder_path), pre.classes, cfg.finetune, cfg.pool,
                  tmp_path / "sweep")
    rows = label_sweep(sweep, [4], [0, 1, 2], ["full", "scratch", "full+pool"])
    table = summarize(rows).set_index("mode")
    print(table)
    assert (rows["train_labels"] == 40).all() and (table["count"] == 3).all()
    full, pooled = table.loc["full"], table.loc["full+pool"]
    assert full["pretraining_lift_points"] > 0, table  # pretraining beat scratch (mean of the 3 seeds)
    assert pooled["mean"] > full["mean"], table  # and the pool stage beat the model it started from
    assert pooled["mean"] > 0.85, table
