"""A checkpoint is resumed only by the run it belongs to: the same settings, training code,
image content and starting weights; a finished run is never resumed (trust issue: a finished
run "resumed" at its end, trained 0 steps and wrote the old encoder again)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.cache import images_file
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.ssl import checkpoint
from pipeline_tasks.ssl.checkpoint import LAST
from pipeline_tasks.ssl.trainer import PretrainRecord, TrainingError, pretrain_encoder


class Stop(Exception):
    pass


def _interrupted(pre: Path, cfg: object, tmp: Path) -> None:
    """A run stopped after its first epoch's checkpoint (what a kill leaves behind)."""
    def stop_after_first_epoch(metrics: dict[str, float], step: int) -> None:
        if "pretrain_loss" in metrics:
            raise Stop

    with pytest.raises(Stop):
        pretrain_encoder(pre, cfg, tmp / "out", stop_after_first_epoch, checkpoint_dir=tmp / "ckpt")  # type: ignore[arg-type]
    assert torch.load(tmp / "ckpt" / LAST, weights_only=True)["step"] == 2


@pytest.fixture
def setup(pre: PreprocessRecord, tiny_cfg: PipelineConfig, tmp_path: Path) -> tuple[Path, object]:
    copy = Path(shutil.copytree(pre.out_dir, tmp_path / "pre"))
    return copy, tiny_cfg.pretrain.model_copy(update={"epochs": 3, "knn_every_epochs": 0})


def _run(pre: Path, cfg: object, tmp: Path) -> PretrainRecord:
    return pretrain_encoder(pre, cfg, tmp / "out", checkpoint_dir=tmp / "ckpt")  # type: ignore[arg-type]


def _weights(rec: PretrainRecord) -> dict[str, torch.Tensor]:
    return dict(torch.load(rec.encoder_path, weights_only=True)["state_dict"])


def test_an_interrupted_run_resumes_where_it_stopped(setup: tuple[Path, object], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    pre, cfg = setup
    _interrupted(pre, cfg, tmp_path)
    with caplog.at_level(logging.INFO):
        rec = _run(pre, cfg, tmp_path)
    assert "resuming from" in caplog.text and rec.steps_trained == rec.total_steps - 2 == 4


def test_a_finished_run_retrains_the_full_budget(setup: tuple[Path, object], tmp_path: Path) -> None:
    pre, cfg = setup
    first = _run(pre, cfg, tmp_path)
    again = _run(pre, cfg, tmp_path)  # what --no-cache and dvc repro do
    assert first.steps_trained == again.steps_trained == first.total_steps == 6


def test_new_pixels_with_the_same_count_retrain_from_scratch(setup: tuple[Path, object], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    pre, cfg = setup
    _interrupted(pre, cfg, tmp_path)
    reference = _run(Path(shutil.copytree(pre, tmp_path / "same")), cfg, tmp_path / "ref")
    images = np.load(images_file(pre, "train"), mmap_mode="r+")
    images[0] = 255 - images[0]  # one training image changes; every count and size stays
    images.flush()
    with caplog.at_level(logging.WARNING):
        rec = _run(pre, cfg, tmp_path)
    assert "from other settings, code, images, starting weights or another number of processes" in caplog.text
    assert rec.steps_trained == rec.total_steps == 6 and rec.resumed_at_epoch is None
    assert any(not torch.equal(v, _weights(reference)[k]) for k, v in _weights(rec).items())


def test_changed_training_code_retrains_from_scratch(setup: tuple[Path, object], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pre, cfg = setup
    _interrupted(pre, cfg, tmp_path)
    real = checkpoint.codehash.code_digest
    monkeypatch.setattr(checkpoint.codehash, "code_digest", lambda *roots: real(*roots) + "-fixed")
    rec = _run(pre, cfg, tmp_path)
    assert rec.steps_trained == rec.total_steps and rec.resumed_at_epoch is None


def test_the_code_digest_covers_the_training_modules() -> None:
    files = checkpoint.codehash.closure(checkpoint.TRAINING_CODE)
    assert {"pipeline_tasks/ssl/views.py", "pipeline_tasks/ssl/losses.py", "pipeline_tasks/ssl/trainer.py",
            "pipeline_tasks/models/encoders.py", "pipeline_tasks/data/batches.py"} <= set(files)


def test_a_run_that_trains_no_step_fails(setup: tuple[Path, object], tmp_path: Path) -> None:
    pre, cfg = setup
    _interrupted(pre, cfg, tmp_path)
    state = torch.load(tmp_path / "ckpt" / LAST, weights_only=True)
    state.update(epoch=2, next_index=2, step=6)  # a checkpoint at the very end of training
    torch.save(state, tmp_path / "ckpt" / LAST)
    with pytest.raises(TrainingError, match="trained 0 of its 6 steps"):
        _run(pre, cfg, tmp_path)
    assert not (tmp_path / "out" / "encoder.pt").exists()
