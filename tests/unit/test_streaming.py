"""Memory that does not grow with the data (issue 15): the stages after preprocessing read the
rows of the memory-mapped cache they need, a batch at a time, never a whole split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipeline_tasks.finetune.pool as pool_module
import pipeline_tasks.finetune.train as train_module
import pipeline_tasks.ssl.trainer as trainer_module
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.batches import BatchSource, Rows
from pipeline_tasks.data.cache import open_images
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.finetune.subsets import LABELS, load_label_budget
from pipeline_tasks.models.inference import predict_logits


class Recorded:
    """A cached split that remembers which of its rows were read, and how many at once."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.rows, self.largest = array, set[int](), 0
        self.shape = array.shape

    def __len__(self) -> int:
        return len(self.array)

    def forget(self) -> None:
        self.rows, self.largest = set(), 0

    def __getitem__(self, at: Any) -> np.ndarray:
        rows = np.atleast_1d(np.arange(len(self.array))[at])
        self.rows.update(rows.tolist())
        self.largest = max(self.largest, len(rows))
        return self.array[at]


@pytest.fixture
def recorded(pre: PreprocessRecord, monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorded]:
    """Every split that fine-tuning, the pool stage and the k-NN monitor open, recorded."""
    splits: dict[str, Recorded] = {}

    def open_recorded(out_dir: str | Path, split: str) -> Recorded:
        return splits.setdefault(split, Recorded(open_images(out_dir, split)))

    for module in (train_module, pool_module, trainer_module):
        monkeypatch.setattr(module, "open_images", open_recorded)
    monkeypatch.setattr(train_module, "view_source", open_recorded)
    return splits


@pytest.mark.parametrize("budget", [0, 1 << 30])  # streamed from the map, or copied to the device
def test_a_batch_source_over_rows_reads_those_rows_only(tmp_path: Path, budget: int) -> None:
    a = np.arange(10 * 12, dtype=np.uint8).reshape(10, 1, 3, 4)
    mapped = Recorded(a)
    source = BatchSource([mapped], torch.device("cpu"), max_device_bytes=budget, rows=np.array([7, 2, 9]))  # type: ignore[list-item]
    assert len(source) == 3 and (source.on_device is None) == (budget == 0)
    assert np.array_equal(source[torch.tensor([2, 0])].numpy(), a[[9, 7]])
    assert np.array_equal(source[0:2].numpy(), a[[7, 2]])
    assert mapped.rows <= {2, 7, 9}


def test_predictions_over_selected_rows_read_a_batch_at_a_time() -> None:
    a = np.random.default_rng(0).integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)
    mapped, rows = Recorded(a), np.array([3, 8, 9, 20, 41, 42, 49])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    got = predict_logits(model, Rows.select(mapped, rows), torch.device("cpu"), batch=2)
    assert torch.allclose(got, predict_logits(model, a[rows], torch.device("cpu")), atol=1e-6)
    assert mapped.rows == set(rows.tolist()) and mapped.largest == 2


@pytest.mark.parametrize("mode", ["full", "linear"])
def test_fine_tuning_and_the_pool_stage_read_only_their_labeled_rows(
        pre: PreprocessRecord, tiny_cfg: PipelineConfig, recorded: dict[str, Recorded], mode: str,
        tmp_path: Path) -> None:
    """With 2 labels per class of 9, the training split's other rows are never read, nor any
    validation row outside the model-selection labels; the pool stage reads the pool's rows in
    its batches (``unlabeled_batch`` at a time) and, labeled, only the same rows."""
    encoder = trainer_module.pretrain_encoder(pre.out_dir, tiny_cfg.pretrain.model_copy(
        update={"epochs": 1, "knn_every_epochs": 0}), tmp_path / "pt").encoder_path
    for split in recorded.values():
        split.forget()  # pretraining reads every training image; what follows must not
    cfg = tiny_cfg.finetune.model_copy(update={"labels_per_class": 2, "val_per_class": 1, "mode": mode})
    rec = train_module.finetune_classifier(pre.out_dir, encoder, pre.classes, cfg, tmp_path / "ft")
    train, val = load_label_budget(tmp_path / "ft" / LABELS)
    assert rec.n_labeled == len(train) == 20 < pre.n_train
    assert recorded["train"].rows == set(train.tolist()) and recorded["val"].rows == set(val.tolist())
    if mode == "linear":
        return
    recorded["train"].forget()
    pool_cfg = tiny_cfg.pool.model_copy(update={"steps": 4, "unlabeled_batch": 16})
    pool_module.learn_from_pool(pre.out_dir, rec.classifier_path, pool_cfg, tmp_path / "ft" / LABELS,
                                tmp_path / "pool.pt", cfg.augment)
    assert recorded["train"].largest <= max(pool_cfg.unlabeled_batch, pool_cfg.labeled_batch)
    assert recorded["val"].rows == set(val.tolist())


def test_the_knn_monitor_embeds_a_fixed_sample(pre: PreprocessRecord, recorded: dict[str, Recorded],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On a split larger than ``KNN_SAMPLE`` the monitor reads that many rows, the same ones at
    every check, in batches."""
    monkeypatch.setattr(trainer_module, "KNN_SAMPLE", 30)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8))
    first = trainer_module._knn_on_val(encoder, Path(pre.out_dir), torch.device("cpu"))
    picked = set(recorded["train"].rows)
    assert len(picked) == 30 < pre.n_train and 0 <= first <= 1
    recorded["train"].forget()
    assert trainer_module._knn_on_val(encoder, Path(pre.out_dir), torch.device("cpu")) == first
    assert recorded["train"].rows == picked


def test_references_scored_on_test_chunks_equal_the_whole_split() -> None:
    """The pixel references score the test split a chunk at a time (its raw pixels are the
    largest thing evaluation would otherwise hold): same choices, same accuracies."""
    from pipeline_tasks.evaluation.references import Split, reference_points

    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        y = rng.integers(0, 3, n)
        return Split(rng.normal(size=(n, 5)) + y[:, None], y)

    train, val, test = split(30), split(30), split(101)
    whole = reference_points((train, val, test), (train, val, test))
    assert 0.4 < whole[0].test_accuracy < 1  # learned something, not everything

    def chunks() -> Any:
        return (Split(test.x[s:s + 7], test.y[s:s + 7]) for s in range(0, 101, 7))

    assert reference_points((train, val, chunks), (train, val, chunks)) == whole
