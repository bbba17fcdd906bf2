import os

import pytest
import torch

from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec, subsample_strided_pointwise
from pipeline_tasks.runtime import DeviceError, resolve_runtime
from pipeline_tasks.ssl.methods import mlp
from tests.conftest import REPO


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


@pytest.mark.parametrize("arch", ["compact", "resnet18"])
def test_an_odd_batch_trains_on_two_threads(arch: str) -> None:
    """A fine-tuning batch is as odd as the user's labels: 13 images on 2 threads (8 on 3)
    crashed PyTorch's oneDNN backward of the downsample path's channels-last 1x1 stride-2
    convolution (heap corruption). Run in a child process: the crash kills the process, not an
    exception. The subsampled convolution is the same function of the same weights."""
    import subprocess
    import sys

    script = f"""
import torch
from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec, subsample_strided_pointwise
model = Classifier(Encoder(EncoderSpec(1, 8, arch="{arch}")), 10)
for threads, batches in ((2, (11, 13)), (3, (8, 10))):  # batches the thread count does not divide
    torch.set_num_threads(threads)
    for n in batches:
        model(torch.randn(n, 1, 28, 28)).sum().backward()
print("trained")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, (done.returncode, done.stderr[-500:])
    conv = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
    swapped = torch.nn.Sequential(conv)
    subsample_strided_pointwise(swapped)
    x = torch.randn(3, 8, 9, 9)
    assert type(swapped[0]).__name__ == "SubsampledPointwise"
    assert torch.allclose(swapped(x), conv(x), atol=1e-6)
