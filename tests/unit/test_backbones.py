"""``pretrain.encoder: timm:<model>`` end to end, for two timm families (EfficientNet and
ResNet): the encoder built from a placed weights file (``.pth`` or ``.safetensors``), one SimCLR
epoch, fine-tuning, and the saved classifier reloaded with the same logits. Tiny RGB images
(32 px, 28 of them, 20 trained on), randomly initialised weights: seconds, nothing downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline_tasks.config import FinetuneConfig, PretrainConfig
from pipeline_tasks.data.cache import save_split
from pipeline_tasks.finetune import train
from pipeline_tasks.models.classifier import load_classifier
from pipeline_tasks.models.encoders import Encoder, EncoderSpec
from pipeline_tasks.models.inference import predict_logits
from pipeline_tasks.models.weights import load_encoder
from pipeline_tasks.ssl.run import build_encoder
from pipeline_tasks.ssl.trainer import pretrain_encoder
from tests.conftest import REPO

FAMILIES = [("tf_efficientnet_lite0", ".pth"), ("resnet10t", ".safetensors")]


def rgb_cache(out: Path) -> Path:
    """A preprocessed folder of 32 px RGB images, two classes (reddish, bluish): 12 train, 4 val,
    4 test and 8 unlabeled pool images."""
    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 2
        x = rng.integers(0, 120, (n, 3, 32, 32))
        x[np.arange(n), labels * 2] += 120  # red for class 0, blue for class 1
        return x.astype(np.uint8), labels

    out.mkdir(parents=True)
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        save_split(out, split, *images(n))
    save_split(out, "pool", images(8)[0], None)
    (out / "splits.json").write_text(json.dumps({"image_size": 32, "channels": 3, "resize": "crop"}))
    (out / "classes.json").write_text(json.dumps(["red", "blue"]))
    return out


def place_weights(name: str, suffix: str, path: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised timm model's weights, classifier included, written as timm's files are."""
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in timm.create_model(name, num_classes=1000).state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    return state


@pytest.mark.parametrize(("name", "suffix"), FAMILIES)
def test_a_timm_encoder_pretrains_finetunes_and_reloads(name: str, suffix: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pre, weights = rgb_cache(tmp_path / "pre"), tmp_path / f"start{suffix}"
    state = place_weights(name, suffix, weights)
    cfg = PretrainConfig(encoder=f"timm:{name}", init=str(weights), epochs=1, batch_size=8, device="cpu",
                         augment="simclr", projection_dim=16, knn_every_epochs=0, collapse_threshold=0)
    start, _ = build_encoder(cfg, 3, cfg.init, 32)
    assert all(torch.equal(v, state[k]) for k, v in start.body.state_dict().items())
    other = tmp_path / ("start.pth" if suffix == ".safetensors" else "start.safetensors")
    place_weights(name, other.suffix, other)  # the same weights in the other format load the same
    same, _ = build_encoder(cfg, 3, other, 32)
    assert all(torch.equal(v, state[k]) for k, v in same.body.state_dict().items())
    record = pretrain_encoder(pre, cfg, tmp_path / "pretrain", init_path=cfg.init)
    assert record.steps_trained == 2 and record.notes[0] == f"initialised from {weights}"
    encoder = load_encoder(record.encoder_path)
    assert encoder.spec == start.spec and encoder.spec.arch == f"timm:{name}"
    trained: dict[str, Any] = {}
    save = train.save_classifier

    def keep(model: torch.nn.Module, *args: Any) -> None:  # the model in memory, as it is saved
        trained["model"] = model
        save(model, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(train, "save_classifier", keep)
    ft = FinetuneConfig(epochs=1, min_steps=2, batch_size=8, label_fraction=1.0, val_per_class=2,
                        augment="natural", device="cpu")
    out = train.finetune_classifier(pre, record.encoder_path, ("red", "blue"), ft, tmp_path / "finetune")
    loaded, classes = load_classifier(out.classifier_path)
    x = np.load(pre / "test_images.npy")
    cpu = torch.device("cpu")
    assert classes == ["red", "blue"] and out.steps == 2
    assert torch.equal(predict_logits(loaded, x, cpu), predict_logits(trained["model"], x, cpu))


@pytest.mark.parametrize(("name", "dim"), [("tf_efficientnet_lite0", 1280), ("resnet10t", 512),
                                           ("mobilenetv3_small_050", 1024)])
def test_timm_encoders_give_pooled_features(name: str, dim: int) -> None:
    """``[B, C, H, W]`` -> ``[B, feature_dim]``, channels-last, one or three channels; MobileNetV3's
    features are its head's 1024, not the 288 channels before it."""
    for channels in (1, 3):
        encoder = Encoder(EncoderSpec(channels, arch=f"timm:{name}")).eval()
        assert encoder.feature_dim == dim and encoder(torch.zeros(2, channels, 32, 32)).shape == (2, dim)
    assert encoder.body.get_parameter(next(n for n, _ in encoder.body.named_parameters())).is_contiguous(
        memory_format=torch.channels_last)


def test_the_config_imports_timm_only_for_a_timm_encoder() -> None:
    """The CLI reads the config before anything heavy: a compact encoder never imports timm."""
    code = ("import sys\nfrom pipeline_tasks.config import load_config\n"
            "load_config('params.yaml', sys.argv[1:])\nprint('timm' in sys.modules)\n")
    compact, timm_encoder = (subprocess.run([sys.executable, "-c", code, *sets], cwd=REPO,
                                            capture_output=True, text=True, check=True)
                             for sets in ([], ["pretrain.encoder=timm:resnet10t"]))
    assert compact.stdout.strip() == "False" and timm_encoder.stdout.strip() == "True"
