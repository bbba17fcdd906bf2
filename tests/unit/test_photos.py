"""The photo recipe: standard weights by name from torch.hub's cache (downloaded only when
allowed), ImageNet's input normalisation carried by the encoder into serving, ``small_stem:
auto`` and the ``photos`` preset (training views from a larger cache: ``test_cache_size``).

No test downloads anything: the "ImageNet weights" are a random resnet18 saved where torch.hub
keeps them, in a temporary ``TORCH_HOME``, and ``torch.hub.download_url_to_file`` is replaced.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from flows.cli.main import _expand, build_parser
from flows.registry.pyfunc_model import ImageModel
from pipeline_tasks.config import ConfigError, PretrainConfig, load_config
from pipeline_tasks.finetune.views import pool_views
from pipeline_tasks.models.classifier import save_classifier
from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec
from pipeline_tasks.models.inference import embed, predict_logits, to_float
from pipeline_tasks.models.starts import WeightsNotFoundError
from pipeline_tasks.models.weights import IMAGENET_MEAN, IMAGENET_STD, load_encoder
from pipeline_tasks.recipes import PRESETS
from pipeline_tasks.ssl.run import build_encoder, build_run
from tests.conftest import PARAMS
from tests.unit.test_cache_size import cpu, tiny_cache

NAMED = PretrainConfig(encoder="resnet18", init="torchvision:resnet18")


def hub_file(torch_home: Path) -> Path:
    """Where torch.hub keeps resnet18's default ImageNet weights, derived from torchvision's URL."""
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    return torch_home / "hub" / "checkpoints" / Path(urlparse(url).path).name


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``TORCH_HOME``, where any download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args: object, **kwargs: object) -> None:
        pytest.fail(f"downloaded {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch"


def fake_weights(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_named_weights_load_from_torch_hubs_cache_offline(torch_home: Path) -> None:
    weights = fake_weights()
    hub_file(torch_home).parent.mkdir(parents=True)
    torch.save(weights, hub_file(torch_home))
    encoder, notes = build_encoder(NAMED, 3, NAMED.init, 224)
    assert notes[0] == f"initialised from torchvision:resnet18 ({hub_file(torch_home)})"
    assert "torchvision's resnet18 IMAGENET1K_V1" in notes[1]
    assert "licence: see https://github.com/pytorch/vision#pre-trained-model-license" in notes[1]
    assert all(torch.equal(v, weights[k]) for k, v in encoder.body.state_dict().items())
    # ImageNet's weights come with ImageNet's input normalisation, and the ImageNet stem at 224 px
    spec = encoder.spec
    assert (spec.mean, spec.std, spec.small_stem) == (IMAGENET_MEAN, IMAGENET_STD, False)
    from flows.stages.starts import starting_weights  # the init baseline resolves the name the same way

    cfg = load_config(PARAMS, ["pretrain.encoder=resnet18", "pretrain.init=torchvision:resnet18"])
    weights = starting_weights(cfg)
    assert weights is not None and weights.path == hub_file(torch_home)


def test_a_missing_named_file_names_the_path_and_url_and_downloads_nothing(torch_home: Path) -> None:
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    with pytest.raises(WeightsNotFoundError) as err:
        build_encoder(NAMED, 3, NAMED.init, 224)
    message = str(err.value)
    assert str(hub_file(torch_home)) in message and url in message and "--allow-download" in message
    assert "\n" not in message and not hub_file(torch_home).exists()


def test_an_allowed_download_is_fetched_into_the_cache_and_used(torch_home: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    weights, calls = fake_weights(2), []

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        torch.save(weights, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    cfg = NAMED.model_copy(update={"init": "torchvision:resnet18:IMAGENET1K_V1", "allow_download": True})
    encoder, _ = build_encoder(cfg, 3, cfg.init, 224)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert calls == [(url, str(hub_file(torch_home)), url.rsplit("-", 1)[1].split(".")[0])]
    assert torch.equal(encoder.body.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])


def test_the_checkpoint_fingerprint_covers_the_named_weights_bytes(torch_home: Path, tmp_path: Path) -> None:
    pre, fingerprints = tiny_cache(tmp_path / "pre"), []
    hub_file(torch_home).parent.mkdir(parents=True)
    cfg = NAMED.model_copy(update={"batch_size": 4})
    for seed in (1, 2):
        torch.save(fake_weights(seed), hub_file(torch_home))
        run, notes, _ = build_run(cpu(), pre, cfg, None, cfg.init, "same images")
        fingerprints.append(run.fingerprint)
    assert notes and fingerprints[0] != fingerprints[1]


@pytest.mark.parametrize(("setting", "size", "expected"), [
    ("auto", 32, True), ("auto", 95, True), ("auto", 96, False), ("auto", 224, False),
    (True, 224, True), (False, 32, False)])
def test_small_stem_auto_follows_the_image_size(setting: bool | str, size: int, expected: bool) -> None:
    cfg = load_config(PARAMS, ["pretrain.encoder=resnet18", f"pretrain.small_stem={str(setting).lower()}"])
    encoder, _ = build_encoder(cfg.pretrain, 1, None, size)
    assert encoder.spec.small_stem is expected  # the resolved value is what the encoder file saves
    assert EncoderSpec.from_dict(encoder.spec.to_dict()).small_stem is expected
    assert isinstance(encoder.body.maxpool, torch.nn.Identity) is expected


def test_imagenet_normalisation_is_torchvisions_normalize_and_old_encoders_keep_theirs() -> None:
    torch.manual_seed(0)
    spec = EncoderSpec(3, arch="resnet18", small_stem=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    encoder = Encoder(spec).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    normalize = torchvision.transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(encoder(to_float(x)), encoder.body(normalize(x.float() / 255)), atol=1e-5)
    old = {k: v for k, v in spec.to_dict().items() if k not in ("mean", "std")}  # a spec saved before
    assert EncoderSpec.from_dict(old).mean == ()
    assert Encoder(EncoderSpec.from_dict(old)).input_scale is None
    assert EncoderSpec.from_dict(spec.to_dict()) == spec


def test_the_served_model_normalises_like_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model as trained (in memory) and as served (saved, loaded by the pyfunc, from PNG
    bytes) give the same probabilities; without the normalisation they would differ."""
    torch.manual_seed(0)
    spec = EncoderSpec(3, 4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    trained = Classifier(Encoder(spec), 3).eval()
    recipe_ = {"image_size": 16, "channels": 3, "resize": "crop"}
    save_classifier(trained, ("a", "b", "c"), recipe_, tmp_path / "classifier.pt")
    pixels = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    monkeypatch.delenv("PRETRAINFLOW_ALLOW_PATHS", raising=False)
    served = ImageModel()
    served.load_context(SimpleNamespace(artifacts={"classifier": str(tmp_path / "classifier.pt")}))
    out = served.predict(None, pd.DataFrame({"image": [buf.getvalue()]}))
    probs = out[["prob_a", "prob_b", "prob_c"]].to_numpy()
    from pipeline_tasks.data.decode import load_image

    (tmp_path / "x.png").write_bytes(buf.getvalue())
    image = load_image(tmp_path / "x.png", 16, 3, "crop")[None]
    as_trained = torch.softmax(predict_logits(trained, image, torch.device("cpu")), 1).numpy()
    plain = Classifier(Encoder(EncoderSpec(3, 4)), 3).eval()
    plain.load_state_dict(trained.state_dict())
    unnormalised = torch.softmax(predict_logits(plain, image, torch.device("cpu")), 1).numpy()
    assert np.allclose(probs, as_trained, atol=1e-5)
    assert not np.allclose(probs, unnormalised, atol=1e-3)


def test_the_served_encoder_applies_imagenet_normalisation(torch_home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder started from torchvision weights, saved as pretraining saves it and served by
    the pyfunc from PNG bytes, gives the embedding of torchvision's own recipe, Normalize(ImageNet
    mean, std) of [0, 1] pixels, and the same as the training path (``embed``, [-1, 1] inputs)."""
    hub_file(torch_home).parent.mkdir(parents=True)
    torch.save(fake_weights(), hub_file(torch_home))
    encoder, _ = build_encoder(NAMED, 3, NAMED.init, 32)
    encoder.eval()
    torch.save({"spec": encoder.spec.to_dict(), "state_dict": encoder.state_dict()}, tmp_path / "encoder.pt")
    (tmp_path / "recipe.json").write_text(json.dumps({"image_size": 32, "channels": 3, "resize": "crop"}))
    pixels = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    monkeypatch.delenv("PRETRAINFLOW_ALLOW_PATHS", raising=False)
    served = ImageModel()
    served.load_context(SimpleNamespace(artifacts={"encoder": str(tmp_path / "encoder.pt"),
                                                   "recipe": str(tmp_path / "recipe.json")}))
    got = torch.tensor(served.predict(None, pd.DataFrame({"image": [buf.getvalue()]}))["embedding"][0],
                       dtype=torch.float32)
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    normalize = torchvision.transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(encoder.body(normalize(image.float() / 255)), dim=1)[0]
    as_trained = embed(encoder, image, torch.device("cpu"))[0]
    assert torch.allclose(got, reference, atol=1e-5) and torch.allclose(got, as_trained, atol=1e-5)


def test_the_photos_preset_loads_and_each_set_wins() -> None:
    """Offline ImageNet photos on a CPU: the packaged Lite0 start at 96 px, views from a 112 px
    cache; each --set still wins over the preset."""
    args = build_parser().parse_args(["run", "--preset", "photos", "--set", "pretrain.epochs=3"])
    _expand(args)
    cfg = load_config(PARAMS, args.overrides)
    assert (cfg.data.image_size, cfg.data.cache_size, cfg.data.channels) == (96, 112, 3)
    p = cfg.pretrain
    assert (p.start, p.init, p.augment, p.epochs, p.allow_download) == ("imagenet", None, "simclr", 3, False)
    assert cfg.finetune.augment == "natural"
    assert args.overrides[:len(PRESETS["photos"])] == list(PRESETS["photos"])
    assert load_config(PARAMS, [*PRESETS["photos"], "data.image_size=80"]).data.image_size == 80


def test_the_objects_preset_flips_in_every_stage_that_augments() -> None:
    args = build_parser().parse_args(["run", "--preset", "objects"])
    _expand(args)
    cfg = load_config(PARAMS, args.overrides)
    assert cfg.pretrain.hflip_prob == 0.5 and cfg.finetune.augment == "objects"
    assert all(view.hflip_prob == 0.5 for view in pool_views(cfg.finetune.augment))


def test_named_weights_must_fit_the_encoder() -> None:
    with pytest.raises(ConfigError, match="are resnet50 weights but pretrain.encoder is resnet18"):
        load_config(PARAMS, ["pretrain.encoder=resnet18", "pretrain.init=torchvision:resnet50"])
    with pytest.raises(ConfigError, match="torchvision weights by name are for resnet18, resnet34, resnet50"):
        load_config(PARAMS, ["pretrain.init=torchvision:vit_b_16"])


def test_an_encoder_file_keeps_the_normalisation_it_was_trained_with(torch_home: Path,
                                                                      tmp_path: Path) -> None:
    """Pretraining from an encoder this project saved (models:/...) inherits its normalisation."""
    hub_file(torch_home).parent.mkdir(parents=True)
    torch.save(fake_weights(), hub_file(torch_home))
    first, _ = build_encoder(NAMED, 3, NAMED.init, 224)
    torch.save({"spec": first.spec.to_dict(), "state_dict": first.state_dict()}, tmp_path / "encoder.pt")
    second, notes = build_encoder(NAMED.model_copy(update={"init": str(tmp_path / "encoder.pt")}), 3,
                                  tmp_path / "encoder.pt", 224)
    assert second.spec == first.spec == load_encoder(tmp_path / "encoder.pt").spec and notes
