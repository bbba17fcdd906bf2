"""The engine's parts: encoders and starting weights, the memory-mapped cache, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline_tasks.config import PretrainConfig
from pipeline_tasks.data.batches import BatchSource
from pipeline_tasks.data.cache import decode_into
from pipeline_tasks.data.decode import prepare_image
from pipeline_tasks.models.encoders import Encoder, EncoderSpec
from pipeline_tasks.ssl.monitors import knn_accuracy
from pipeline_tasks.ssl.run import build_encoder


@pytest.mark.parametrize(("arch", "dim"), [("resnet18", 512), ("resnet50", 2048)])
def test_torchvision_encoders_with_the_small_stem(arch: str, dim: int) -> None:
    enc = Encoder(EncoderSpec(in_channels=1, arch=arch, small_stem=True))
    assert enc.feature_dim == dim and enc(torch.zeros(2, 1, 32, 32)).shape == (2, dim)
    # the small stem keeps 32 px at full resolution into layer1; the ImageNet stem quarters it
    small = enc.body.layer1(enc.body.relu(enc.body.bn1(enc.body.conv1(torch.zeros(1, 1, 32, 32)))))
    assert small.shape[-1] == 32
    imagenet_stem = Encoder(EncoderSpec(3, arch=arch, small_stem=False))
    assert imagenet_stem(torch.zeros(1, 3, 64, 64)).shape == (1, dim)


def test_init_from_a_torchvision_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    weights = torchvision.models.resnet18(weights=None).state_dict()  # stands in for ImageNet's
    torch.save(weights, tmp_path / "resnet18.pth")
    cfg = PretrainConfig(encoder="resnet18", small_stem=False, init=str(tmp_path / "resnet18.pth"))
    enc, notes = build_encoder(cfg, 3, cfg.init, 224)
    assert torch.equal(enc.body.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])
    # one channel: conv1 summed over RGB; the small stem: conv1 left random, and said so
    gray, _ = build_encoder(cfg, 1, cfg.init, 224)
    assert torch.allclose(gray.body.conv1.weight, weights["conv1.weight"].sum(1, keepdim=True))
    _, notes = build_encoder(cfg.model_copy(update={"small_stem": True}), 3, cfg.init, 224)
    assert any("left random" in n for n in notes)


def test_bad_init_files_are_clear_errors(tmp_path: Path) -> None:
    cfg = PretrainConfig(encoder="resnet18")
    with pytest.raises(ValueError, match="weights file not found.*nothing is downloaded"):
        build_encoder(cfg, 3, tmp_path / "missing.pth", 32)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        build_encoder(cfg, 3, tmp_path / "r34.pth", 32)
    (tmp_path / "junk.pth").write_text("not torch")
    with pytest.raises(ValueError, match="not a PyTorch weights file"):
        build_encoder(cfg, 3, tmp_path / "junk.pth", 32)
    with pytest.raises(ValueError, match="the compact encoder starts only from an encoder file"):
        build_encoder(PretrainConfig(), 3, tmp_path / "r34.pth", 32)


def test_parallel_decoding_fills_the_memory_map_like_one_process(tiny_data: Path, tmp_path: Path) -> None:
    files = sorted(tiny_data.glob("*/*.png"))
    decode_into(tmp_path / "one.npy", files, 28, 1, "crop", workers=1)
    decode_into(tmp_path / "two.npy", files, 28, 1, "crop", workers=2)
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy", mmap_mode="r")
    assert one.shape == (120, 1, 28, 28) and np.array_equal(one, two) and one.any()


def test_batches_gathered_from_memory_maps_match_the_arrays(tmp_path: Path) -> None:
    a = np.arange(10 * 12, dtype=np.uint8).reshape(10, 1, 3, 4)
    b = (255 - np.arange(5 * 12, dtype=np.uint8)).reshape(5, 1, 3, 4)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    maps = [np.load(tmp_path / "a.npy", mmap_mode="r"), np.load(tmp_path / "b.npy", mmap_mode="r")]
    both = np.concatenate([a, b])
    batches = [torch.tensor([14, 0, 3]), torch.tensor([12, 11, 9, 1])]
    for budget in (0, 1 << 30):  # streamed from the maps, or all on the device
        source = BatchSource(maps, torch.device("cpu"), max_device_bytes=budget)
        assert (source.on_device is None) == (budget == 0) and len(source) == 15
        for idx, got in zip(batches, source.batches(batches), strict=True):
            assert np.array_equal(got.numpy(), both[idx.numpy()])


def test_knn_in_chunks_equals_one_matrix() -> None:
    torch.manual_seed(0)
    train, test = torch.nn.functional.normalize(torch.randn(300, 16), dim=1), torch.randn(97, 16)
    ty, qy = torch.randint(0, 4, (300,)), torch.randint(0, 4, (97,))
    test = torch.nn.functional.normalize(test, dim=1)
    assert knn_accuracy(train, ty, test, qy, chunk=10) == knn_accuracy(train, ty, test, qy, chunk=10_000)


def test_resize_keeps_the_aspect_ratio_unless_told_to_squash() -> None:
    wide = Image.new("L", (40, 20), 0)
    wide.paste(255, (10, 0, 30, 20))  # a white square in the middle of a black 2:1 image
    crop = prepare_image(wide, 10, 1, "crop")[0]
    pad = prepare_image(wide, 10, 1, "pad")[0]
    squash = prepare_image(wide, 10, 1, "squash")[0]
    assert crop.mean() > 200  # the centre crop is the white square
    assert pad[:2].max() == 0 and pad[-2:].max() == 0 and pad[5, 5] == 255  # black bars top and bottom
    assert squash[:, 0].max() < 60 and squash[5, 5] == 255  # squashed: the black sides remain
