import pytest
import torch

from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec
from pipeline_tasks.runtime import DeviceError, resolve_runtime
from pipeline_tasks.ssl.methods import mlp


def test_default_encoder_is_the_compact_resnet() -> None:
    enc = Encoder(EncoderSpec())
    n = sum(p.numel() for p in enc.parameters())
    assert 0.30e6 < n < 0.32e6  # 0.31M parameters at base width 16
    assert enc(torch.zeros(2, 1, 28, 28)).shape == (2, 128)


def test_heads_and_rgb() -> None:
    enc = Encoder(EncoderSpec(in_channels=3, base_width=8))
    assert mlp(enc.feature_dim, enc.feature_dim, 32)(enc(torch.zeros(4, 3, 32, 32))).shape == (4, 32)
    assert Classifier(enc, 5)(torch.zeros(4, 3, 32, 32)).shape == (4, 5)


def test_spec_round_trip() -> None:
    spec = EncoderSpec(3, 8, (2, 1))
    assert EncoderSpec.from_dict(spec.to_dict()) == spec


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        Classifier(Encoder(), 1)
    with pytest.raises(ValueError, match="encoder spec"):
        Encoder(EncoderSpec(in_channels=2))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="pretrain.device: cuda, but no CUDA GPU"):
            resolve_runtime("cuda")
