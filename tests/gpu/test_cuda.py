"""The training core on CUDA (bf16 autocast, channels_last). Skipped where there is no GPU."""

from pathlib import Path

import pytest
import torch

from pipeline_tasks.augment import ViewAugment
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.preprocess import preprocess_data
from pipeline_tasks.pretrain import load_encoder, pretrain_encoder
from pipeline_tasks.validate import build_manifest

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_augment_runs_on_the_device() -> None:
    x = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    v = ViewAugment(hflip=True)(x, torch.Generator(device="cuda").manual_seed(0))
    assert v.device.type == "cuda" and v.shape == x.shape


def test_pretrain_on_cuda(tiny_cfg: PipelineConfig, tmp_path: Path) -> None:
    build_manifest(tiny_cfg.data.dir).to_csv(tmp_path / "m.csv", index=False)
    pre = preprocess_data(tmp_path / "m.csv", tiny_cfg.data.dir, tiny_cfg.data, tiny_cfg.preprocess,
                          tmp_path / "pre")
    cfg = tiny_cfg.pretrain.model_copy(update={"device": "cuda", "epochs": 2})
    rec = pretrain_encoder(pre.out_dir, cfg, tmp_path / "pt")
    assert torch.isfinite(torch.tensor(rec.final_loss))
    assert load_encoder(rec.encoder_path)(torch.zeros(1, 1, 28, 28)).shape == (1, 64)
