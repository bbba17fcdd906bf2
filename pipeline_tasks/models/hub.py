"""Standard weights by name, looked up in the caches their libraries download to (step c of
``models.starts``' order); a download happens only through ``Cached.fetch``, which
``models.starts`` calls only when allowed.

- ``torchvision:ARCH[:WEIGHTS]``: torchvision's weights API (``get_model_weights``; no weights
  name: the enum's ``DEFAULT``) gives the URL, and torch.hub keeps its file as
  ``<torch.hub.get_dir()>/checkpoints/<the URL's file name>`` (``$TORCH_HOME/hub/...``).
- ``timm:NAME[.TAG]``: timm's ``pretrained_cfg`` for it (``timm.models.get_pretrained_cfg``)
  names a Hugging Face repo (``hf_hub_id``), looked up in the Hugging Face cache with
  ``huggingface_hub.try_to_load_from_cache`` (``model.safetensors``, then ``pytorch_model.bin``:
  timm's own order), and a URL, looked up in torch.hub's cache where timm keeps it.
- ``hf-hub:ORG/REPO``: the repo's weights file in the Hugging Face cache, and its
  ``config.json`` (timm's ``pretrained_cfg``: input normalisation and size) when cached.

Looking up never touches the network (with ``HF_HUB_OFFLINE=1`` set or not). Downloads go
through ``torch.hub.download_url_to_file`` (which checks the sha256 prefix in the file name and
renames a complete download into place) and ``huggingface_hub.hf_hub_download``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision

from pipeline_tasks.recipes import HF_HUB, timm_name, torchvision_init

HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's preference on the hub
TORCHVISION_LICENCE = "see https://github.com/pytorch/vision#pre-trained-model-license"


@dataclass(frozen=True)
class Cached:
    """Where named weights lie: the file when cached, every place looked, and how to fetch it."""

    path: Path | None
    looked: tuple[str, ...]  # "the Hugging Face cache: ...", "torch.hub's cache: ..."
    fetch: Callable[[], Path]  # downloads; raises ValueError naming what failed
    source: str  # what the weights are
    licence: str
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # mean, std, input_size, architecture


@dataclass(frozen=True)
class NamedWeights:
    arch: str  # resnet50
    weights: str  # the enum member's name, e.g. IMAGENET1K_V2 (DEFAULT resolved)
    url: str
    path: Path  # where torch.hub keeps the file


def hub_file(url: str) -> Path:
    """Where torch.hub (and timm) keep the download of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def named_weights(init: str) -> NamedWeights:
    """The weights ``init`` (``torchvision:ARCH[:WEIGHTS]``) names; a ``ValueError`` naming the
    choices for an unknown architecture or weights name."""
    parsed = torchvision_init(init)
    if parsed is None:
        raise ValueError(f"{init}: not a torchvision:ARCH[:WEIGHTS] name")
    arch, which = parsed
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError as exc:
        raise ValueError(f"{init}: torchvision has no model {arch!r}") from exc
    names = [m.name for m in enum]
    if which is not None and which not in enum.__members__:
        raise ValueError(f"{init}: {enum.__name__} has no {which!r}; choose one of {', '.join(names)}")
    member = enum.DEFAULT if which is None else enum[which]
    return NamedWeights(arch, member.name, member.url, hub_file(member.url))


def download_url(url: str, path: Path) -> Path:
    """``url`` to ``path`` with torch.hub (sha256 prefix checked); ``ValueError`` on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)  # resnet50-11ad3fa6.pth: sha256 prefix
    try:
        torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None)
    except Exception as exc:  # noqa: BLE001 - offline, refused, a bad hash: one message either way
        raise ValueError(f"downloading {url} to {path} failed ({_first_line(exc)}); fetch it to that path "
                         "by hand") from exc
    return path


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _torchvision(init: str) -> Cached:
    named = named_weights(init)
    return Cached(named.path if named.path.is_file() else None,
                  (f"torch.hub's cache: {named.path} (from {named.url})",),
                  lambda: download_url(named.url, named.path),
                  f"{init}: torchvision's {named.arch} {named.weights}", TORCHVISION_LICENCE)


def _hf_cached(repo: str, files: tuple[str, ...]) -> tuple[Path | None, str]:
    """The first of ``files`` in the Hugging Face cache for ``repo`` (``ORG/REPO[@REVISION]``),
    and where it was looked for."""
    import huggingface_hub  # noqa: PLC0415

    repo_id, _, revision = repo.partition("@")
    for name in files:
        found = huggingface_hub.try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(found, str):
            return Path(found), ""
    folder = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    return None, f"the Hugging Face cache: {folder} ({', '.join(files)})"


def _hf_download(repo: str, files: tuple[str, ...]) -> Path:
    """The first of ``files`` that ``repo`` has, downloaded into the Hugging Face cache."""
    import huggingface_hub  # noqa: PLC0415

    repo_id, _, revision = repo.partition("@")
    failed = []
    for name in files:
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, name, revision=revision or None))
        except Exception as exc:  # noqa: BLE001 - missing file, offline, refused: try the next, then say all
            failed.append(f"{name}: {_first_line(exc)}")
    raise ValueError(f"downloading from the Hugging Face hub {repo} failed ({'; '.join(failed)})")


def _timm(init: str) -> Cached:
    """``timm:NAME[.TAG]``: the Hugging Face cache, then torch.hub's (timm's order)."""
    from timm.models import get_pretrained_cfg, list_pretrained  # noqa: PLC0415

    name = str(timm_name(init))
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown tag
        tags = ", ".join(list_pretrained(name.split(".")[0] + ".*"))
        raise ValueError(f"{init}: {exc} timm has {tags}") from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"{init}: timm has no pretrained weights by that name; timm.list_pretrained() "
                         "lists those it has")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES
    repo, url = cfg.hf_hub_id or "", cfg.url if isinstance(cfg.url, str) else ""
    looked, path, where_from = [], None, f"the Hugging Face hub {repo}" if repo else url
    if repo:
        path, where = _hf_cached(repo, files)
        looked.append(where)
    if path is None and url:
        path, where_from = (hub_file(url), url) if hub_file(url).is_file() else (None, where_from)
        looked.append(f"torch.hub's cache: {hub_file(url)} (from {url})")

    def fetch() -> Path:
        return _hf_download(repo, files) if repo else download_url(url, hub_file(url))

    licence = cfg.license or (f"see https://huggingface.co/{repo}" if repo else "unknown")
    what = f"{init}: timm's {cfg.architecture}.{cfg.tag} from {where_from}"
    recipe = {"architecture": cfg.architecture, "mean": cfg.mean, "std": cfg.std,
              "input_size": cfg.input_size, "fixed_input_size": cfg.fixed_input_size}
    return Cached(path, tuple(looked), fetch, what, licence, recipe)


def _hf_hub(init: str) -> Cached:
    """``hf-hub:ORG/REPO``: the weights file and, for the input recipe, ``config.json``."""
    repo = init.removeprefix(HF_HUB)
    path, where = _hf_cached(repo, HF_FILES)
    config, _ = _hf_cached(repo, ("config.json",))
    meta = json.loads(config.read_text()) if config else {}
    cfg = {**meta.get("pretrained_cfg", {}), "architecture": meta.get("architecture")}
    licence = cfg.get("license") or f"see https://huggingface.co/{repo.partition('@')[0]}"
    return Cached(path, (where,), lambda: _hf_download_repo(repo), f"{init}: the Hugging Face hub {repo}",
                  str(licence), {k: v for k, v in cfg.items() if v is not None})


def _hf_download_repo(repo: str) -> Path:
    """The repo's weights, and its ``config.json`` when it has one (the input recipe)."""
    path = _hf_download(repo, HF_FILES)
    try:
        _hf_download(repo, ("config.json",))
    except ValueError:
        pass  # weights without a timm config: the encoder's default pretrained_cfg applies
    return path


def cached(init: str) -> Cached:
    """Named weights ``init`` (``torchvision:``, ``timm:``, ``hf-hub:``) in their caches; a
    ``ValueError`` for a name that names no weights."""
    if torchvision_init(init):
        return _torchvision(init)
    if timm_name(init):
        return _timm(init)
    if init.startswith(HF_HUB):
        return _hf_hub(init)
    raise ValueError(f"{init}: not weights by name (torchvision:, timm:, hf-hub:)")
