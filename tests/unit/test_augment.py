import pytest
import torch

from pipeline_tasks.augment import ViewAugment, to_float


def _batch(n: int = 8) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 8:20, 12:16] = 255  # the same bar in every image
    return x


def test_views_have_shape_and_range() -> None:
    v = ViewAugment()(_batch(), torch.Generator().manual_seed(0))
    assert v.shape == (8, 1, 28, 28) and v.dtype == torch.float32
    assert v.min() >= -1 and v.max() <= 1


def test_parameters_are_drawn_per_image() -> None:
    v = ViewAugment()(_batch(), torch.Generator().manual_seed(0))
    # identical inputs, different random crops/rotations/erasing -> pairwise different views
    assert all(not torch.allclose(v[0], v[i]) for i in range(1, 8))


def test_seeded_generator_reproduces_views() -> None:
    aug = ViewAugment()
    a = aug(_batch(), torch.Generator().manual_seed(3))
    b = aug(_batch(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_identity_settings_keep_the_image() -> None:
    aug = ViewAugment(crop_scale_min=1.0, rotation_degrees=0, jitter=0, noise_std=0, erase_prob=0)
    x = _batch()
    # aspect-ratio jitter still applies at scale 1; a centred bar survives with small change
    assert (aug(x) - to_float(x)).abs().mean() < 0.2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="crop_scale_min"):
        ViewAugment(crop_scale_min=0)
    with pytest.raises(ValueError, match="B,C,H,W"):
        ViewAugment()(torch.zeros(28, 28))
