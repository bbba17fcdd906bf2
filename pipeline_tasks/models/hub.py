"""Standard weights by name: ``pretrain.init: torchvision:resnet50[:IMAGENET1K_V2]``.

The name goes through torchvision's weights API (``get_model_weights``; no weights name: the
enum's ``DEFAULT``) to its URL and to the file ``torch.hub.load_state_dict_from_url`` would keep
for it, ``<torch.hub.get_dir()>/checkpoints/<the URL's file name>`` (``$TORCH_HOME/hub/...``).
That file is used when it is there. It is downloaded only when allowed
(``pretrain.allow_download``, ``--allow-download``), with ``torch.hub.download_url_to_file``,
which checks the sha256 prefix in the file name and renames a complete download into place;
otherwise a missing file is one ``WeightsNotCachedError`` naming the file, its URL and the switch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from pipeline_tasks.recipes import torchvision_init


class WeightsNotCachedError(ValueError):
    """A ``torchvision:`` init whose file is not in torch.hub's cache, and may not be fetched."""


@dataclass(frozen=True)
class NamedWeights:
    arch: str  # resnet50
    weights: str  # the enum member's name, e.g. IMAGENET1K_V2 (DEFAULT resolved)
    url: str
    path: Path  # where torch.hub keeps the file


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
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(member.url).path)
    return NamedWeights(arch, member.name, member.url, path)


def _missing(named: NamedWeights, init: str) -> str:
    return (f"pretrain.init {init}: the weights file {named.path} is not there and downloads are off; "
            f"fetch {named.url} to that path, or allow the download with --allow-download "
            "(--set pretrain.allow_download=true)")


def check_init(init: str | None, allow_download: bool) -> None:
    """Nothing when ``init`` is no ``torchvision:`` name, its file is cached or downloads are
    allowed; else ``WeightsNotCachedError`` (a check before a run starts: it fetches nothing)."""
    if init and torchvision_init(init):
        named = named_weights(init)
        if not named.path.is_file() and not allow_download:
            raise WeightsNotCachedError(_missing(named, init))


def resolve_init(init: str | Path | None, allow_download: bool = False) -> str | Path | None:
    """``init`` as a local file: a ``torchvision:`` name becomes torch.hub's file for it
    (downloaded first when missing and ``allow_download``); anything else is returned as is.
    Raises ``WeightsNotCachedError`` when the file is missing and may not be fetched, and a
    ``ValueError`` naming the URL and the file when the download fails."""
    if init is None or not torchvision_init(str(init)):
        return init
    named = named_weights(str(init))
    if named.path.is_file():
        return named.path
    if not allow_download:
        raise WeightsNotCachedError(_missing(named, str(init)))
    named.path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(named.path.name)  # resnet50-11ad3fa6.pth: sha256 prefix
    try:
        torch.hub.download_url_to_file(named.url, str(named.path), match.group(1) if match else None)
    except Exception as exc:  # noqa: BLE001 - offline, refused, a bad hash: one message either way
        raise ValueError(f"pretrain.init {init}: downloading {named.url} to {named.path} failed "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         "fetch it to that path by hand") from exc
    return named.path
