import pytest
import torch

from pipeline_tasks.models.inference import to_float
from pipeline_tasks.ssl.views import ViewAugment


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
    aug = ViewAugment(crop_scale_min=1.0, rotation_degrees=0, brightness=0, contrast=0, noise_std=0,
                      erase_prob=0)
    x = _batch()
    # aspect-ratio jitter still applies at scale 1; a centred bar survives with small change
    assert (aug(x) - to_float(x)).abs().mean() < 0.2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="crop_scale_min"):
        ViewAugment(crop_scale_min=0)
    with pytest.raises(ValueError, match="B,C,H,W"):
        ViewAugment()(torch.zeros(28, 28))


def _rgb(n: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8)


ONLY_COLOUR = dict(crop_scale_min=1.0, rotation_degrees=0, brightness=0, contrast=0, noise_std=0,
                   erase_prob=0)


def test_hue_rotation_is_exact_on_primaries_and_identity_at_zero() -> None:
    from pipeline_tasks.ssl.views import _shift_hue

    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    green = _shift_hue(red, torch.full((1, 1, 1), 1 / 3))
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    x = _rgb().float() / 255
    assert torch.allclose(_shift_hue(x, torch.zeros(8, 1, 1)), x, atol=1e-5)


def test_grayscale_solarize_and_blur_do_what_they_say() -> None:
    x = _rgb()
    gray = ViewAugment(**ONLY_COLOUR, grayscale_prob=1.0)(x)
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-4)
    assert torch.allclose(gray[:, 1], gray[:, 2], atol=1e-4)
    solar = ViewAugment(**ONLY_COLOUR, solarize_prob=1.0)(torch.full((2, 3, 8, 8), 200, dtype=torch.uint8))
    assert torch.allclose(solar, torch.full_like(solar, (255 - 200) / 127.5 - 1), atol=0.02)
    checker = ((torch.arange(32).view(1, 1, 1, 32) + torch.arange(32).view(1, 1, 32, 1)) % 2 * 255)
    checker = checker.expand(4, 3, 32, 32).to(torch.uint8)
    blurred = ViewAugment(**ONLY_COLOUR, blur_prob=1.0, blur_sigma_min=20, blur_sigma_max=30)(checker)
    sharp = ViewAugment(**ONLY_COLOUR, blur_prob=0.0)(checker)
    assert blurred.std() < 0.3 * sharp.std()  # the checkerboard's edges are smoothed away


def test_colour_parameters_are_drawn_per_image() -> None:
    x = _rgb(1).expand(8, 3, 16, 16).contiguous()
    v = ViewAugment(**{**ONLY_COLOUR, "saturation": 0.8, "hue": 0.3, "brightness": 0.4})(
        x, torch.Generator().manual_seed(0))
    assert all(not torch.allclose(v[0], v[i]) for i in range(1, 8))


def test_presets_and_overrides() -> None:
    from pipeline_tasks.ssl.views import view_pair

    first, second = view_pair("byol")
    assert (first.blur_prob, second.blur_prob, second.solarize_prob) == (1.0, 0.1, 0.2)
    digits = view_pair("digits", hflip_prob=None, erase_prob=0.0)[0]
    assert digits.hflip_prob == 0.0 and digits.erase_prob == 0.0 and digits.rotation_degrees == 15
    assert view_pair("simclr")[0].hflip_prob == 0.5
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        view_pair("imagenet")
    with pytest.raises(ValueError, match="hue"):
        ViewAugment(hue=0.7)
