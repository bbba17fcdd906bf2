"""The training core on CUDA: augmentation, pretraining (bf16, channels_last, streamed cache,
compile), fine-tuning and evaluation on the device. Skipped where there is no GPU."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.batches import BatchSource
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.evaluation.evaluate import evaluate_classifier
from pipeline_tasks.finetune.train import finetune_classifier
from pipeline_tasks.models.weights import load_encoder
from pipeline_tasks.ssl.trainer import pretrain_encoder
from pipeline_tasks.ssl.views import ViewAugment

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_augment_runs_on_the_device() -> None:
    x = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    v = ViewAugment(hflip_prob=0.5, saturation=0.4, hue=0.1, grayscale_prob=0.2, blur_prob=0.5,
                    solarize_prob=0.2)(x, torch.Generator(device="cuda").manual_seed(0))
    assert v.device.type == "cuda" and v.shape == x.shape and torch.isfinite(v).all()


def test_streamed_batches_arrive_on_the_device(tmp_path: Path) -> None:
    a = np.random.default_rng(0).integers(0, 256, (100, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    source = BatchSource([mapped], torch.device("cuda"), max_device_bytes=0)
    batches = [torch.tensor([5, 1, 99]), torch.tensor([0, 50])]
    for idx, got in zip(batches, source.batches(batches), strict=True):
        assert got.is_cuda and np.array_equal(got.cpu().numpy(), a[idx.numpy()])


@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg"])
def test_pretrain_on_cuda(method: str, pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                          tmp_path: Path) -> None:
    cfg = tiny_cfg.pretrain.model_copy(update={"device": "cuda", "epochs": 2, "method": method})
    rec = pretrain_encoder(pre.out_dir, cfg, tmp_path / "pt", checkpoint_dir=tmp_path / "ckpt")
    assert np.isfinite(rec.final_loss) and (tmp_path / "ckpt" / "last.pt").is_file()
    assert load_encoder(rec.encoder_path)(torch.zeros(1, 1, 28, 28)).shape == (1, 64)


def test_compiled_resnet18_in_bf16(pre: PreprocessRecord, tiny_cfg: PipelineConfig, tmp_path: Path) -> None:
    cfg = tiny_cfg.pretrain.model_copy(update={"device": "cuda", "epochs": 1, "encoder": "resnet18",
                                               "compile": True, "precision": "bf16"})
    assert np.isfinite(pretrain_encoder(pre.out_dir, cfg, tmp_path).final_loss)


def test_finetune_and_evaluate_on_cuda(pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                                       tmp_path: Path) -> None:
    pretrain_cfg = tiny_cfg.pretrain.model_copy(update={"device": "cuda"})
    enc = pretrain_encoder(pre.out_dir, pretrain_cfg, tmp_path / "pt")
    # enough steps to learn: on the CPU these settings give full 0.65-0.7, linear 0.4, scratch 0.85
    cfg = tiny_cfg.finetune.model_copy(update={"device": "cuda", "min_steps": 150, "label_fraction": 1.0})
    for mode in ("full", "linear", "scratch"):
        rec = finetune_classifier(pre.out_dir, enc.encoder_path, pre.classes, cfg, tmp_path, mode=mode)
        ev = evaluate_classifier(pre.out_dir, rec.classifier_path,
                                 tiny_cfg.evaluate.model_copy(update={"device": "cuda"}),
                                 tmp_path / "m.json", tmp_path / "plots")
        assert ev.test_accuracy > (0.25 if mode == "linear" else 0.5), f"{mode}: {ev.test_accuracy}"
