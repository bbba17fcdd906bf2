"""Which images to label: the typical point of each k-means cluster of the encoder's embedding.

With a budget of ``n`` labels, random picks land several times in the big modes of the data and
miss the small ones. Clustering the pretrained encoder's embeddings into ``n`` groups and
labelling the most typical image of each covers every mode once; Cold PAWS (Pourahmadi,
Di Tommaso, Mirmohammadi, "A simple baseline for low-budget active learning", 2022,
arXiv:2212.04441) reached 93.6% on CIFAR-10 with 30 labels picked this way, far above random
picks at that budget.

``pick_typical`` is the choice (scikit-learn's k-means, then per cluster the member closest
to its centre); ``suggest_labels`` streams a pool folder through the encoder and writes the
picks as a folder to label: ``suggestions.csv``, ``contact_sheet.png`` and copies of the files.
"""

from __future__ import annotations

import csv
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline_tasks.data.datasets import atomic_folder
from pipeline_tasks.data.decode import SUFFIXES, DecodeError, load_image
from pipeline_tasks.data.listing import BAD_NAME, list_pool
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.nearcopy import pool_copies
from pipeline_tasks.evaluation.grids import suggestion_sheet
from pipeline_tasks.models.encoders import Encoder
from pipeline_tasks.models.inference import embed
from pipeline_tasks.models.weights import load_encoder

CSV_NAME, SHEET_NAME = "suggestions.csv", "contact_sheet.png"


class SuggestError(ValueError):
    """A request ``suggest_labels`` cannot serve; the message names the thing and the fix."""


@dataclass(frozen=True)
class Picks:
    """The chosen points, best first (the biggest cluster first, then the closest to its centre).

    ``index`` int64 ``[n]``: rows of the embedding; ``cluster`` int64 ``[n]``: its k-means
    cluster; ``cluster_size`` int64 ``[n]``: points in that cluster; ``distance`` float64
    ``[n]``: Euclidean distance from the point to the cluster's centre, in embedding units."""

    index: np.ndarray
    cluster: np.ndarray
    cluster_size: np.ndarray
    distance: np.ndarray


def check_budget(n: int, available: int) -> None:
    """``ValueError`` unless ``1 <= n <= available``."""
    if n < 1:
        raise SuggestError(f"asked for {n} suggestions; ask for at least 1")
    if n > available:
        raise SuggestError(f"asked for {n} suggestions but there are only {available} images; "
                           f"ask for at most {available}")


def pick_typical(embeddings: np.ndarray, n: int, seed: int = 0, n_init: int = 10) -> Picks:
    """``n`` distinct rows of ``embeddings`` float ``[N, D]`` (L2-normalised) that cover them:
    k-means with ``k = n`` (scikit-learn, k-means++, ``n_init`` seeded restarts, the best kept),
    then per cluster the member closest to its centre: the "most typical point" of Cold PAWS,
    an approximation of the k-means medoid that needs no ``N x N`` distances. A cluster left
    without members (duplicated points) takes the closest point not picked yet. Raises
    ``ValueError`` when ``n < 1``, ``n > N`` or the embeddings are not a finite 2-D array."""
    from sklearn.cluster import KMeans  # noqa: PLC0415 - ~0.5 s; only when picking
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise SuggestError(f"embeddings must be a finite [N, D] array, got shape {x.shape}")
    check_budget(n, len(x))
    with warnings.catch_warnings():  # fewer distinct points than n: handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=n, n_init=n_init, random_state=seed).fit(x)
    sizes = np.bincount(km.labels_, minlength=n)
    chosen, gaps = np.zeros(n, dtype=np.int64), np.zeros(n)
    free = np.ones(len(x), dtype=bool)
    for c in np.argsort(-sizes, kind="stable"):  # big clusters choose first
        members = np.flatnonzero((km.labels_ == c) & free)
        pool = members if len(members) else np.flatnonzero(free)
        to_centre = np.linalg.norm(x[pool] - km.cluster_centers_[c], axis=1)
        best = int(np.argmin(to_centre))
        chosen[c], gaps[c], free[pool[best]] = pool[best], to_centre[best], False
    order = np.lexsort((gaps, -sizes))  # rank: cluster size, then distance
    return Picks(chosen[order], order.astype(np.int64), sizes[order].astype(np.int64), gaps[order])


@dataclass(frozen=True)
class PoolImages:
    """A pool's image files (absolute or under the working folder), sorted, and what was left
    out of it (``relative path: why``)."""

    files: list[Path]
    left_out: list[str]


def pool_images(pool_dir: str | Path) -> PoolImages:
    """The files of ``pool_dir`` (any layout) with an image suffix (``decode.SUFFIXES``);
    symlinks out of it and names that are not UTF-8 are left out. ``DataError`` when the folder
    is missing or empty."""
    root, files, left_out = Path(pool_dir), [], []
    for rel, key in zip(*(list_pool(root)[c] for c in ("path", "stat_key")), strict=True):
        if key is None or key == BAD_NAME:
            left_out.append(f"{rel}: a symlink out of the pool or a name that is not UTF-8")
        elif Path(rel).suffix.lower() not in SUFFIXES:
            left_out.append(f"{rel}: not an image suffix")
        else:
            files.append(root / rel)
    return PoolImages(files, left_out)


def _decoded_batches(files: Sequence[Path], size: int, channels: int, resize: str,
                     batch: int) -> Iterator[tuple[np.ndarray, list[int], list[str]]]:
    """``(uint8 [B, C, size, size], their positions in files, failures)`` per ``batch`` files."""
    for start in range(0, len(files), batch):
        images, kept, failed = [], [], []
        for i, f in enumerate(files[start:start + batch], start):
            try:
                images.append(load_image(f, size, channels, resize))
                kept.append(i)
            except DecodeError as exc:
                failed.append(str(exc))
        shape = (0, channels, size, size)
        yield (np.stack(images) if images else np.empty(shape, dtype=np.uint8)), kept, failed


def without_copies(found: PoolImages, pool: Path, labeled: pd.DataFrame, cache: Path | None) -> PoolImages:
    """``found`` minus the pool images that are exact or near copies (the one near-copy rule) of a
    labeled image of any split: an image labelled since the last run (its original is still in the
    pool), or a near copy of a test image, which labelled would leak the test split into training.
    Each is named in ``left_out``. The pool's hashes come from its manifest (``cache``: the one the
    validation gate keeps for the pool, so a validated pool is not decoded again)."""
    manifest = build_manifest(pool, cache, pool=True)
    copies = pool_copies(manifest[manifest["decodes"].astype(bool)], labeled)
    if copies.empty:
        return found
    copied = {str(pool / p): f"{p}: a copy ({m}) of the labeled image {c}"
              for p, c, m in copies[["path", "copy_of", "match"]].itertuples(index=False)}
    return PoolImages([f for f in found.files if str(f) not in copied],
                      found.left_out + [copied[str(f)] for f in found.files if str(f) in copied])


def embed_files(encoder: Encoder, files: Sequence[Path], size: int, resize: str,
                device: torch.device, batch: int = 256,
                dtype: torch.dtype | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode ``files`` (``decode.load_image``: the training recipe ``size``, ``resize`` and the
    encoder's channels) and embed them, ``batch`` at a time (never the whole pool in memory).
    Returns ``(L2-normalised float32 [M, D], positions in files of the M embedded, messages for
    the files that do not decode)``."""
    channels = encoder.spec.in_channels
    encoder = encoder.to(device)
    feats, kept, failed = [], [], []
    for images, positions, errors in _decoded_batches(files, size, channels, resize, batch):
        if len(images):
            feats.append(embed(encoder, images, device, batch, dtype=dtype).cpu().numpy())
        kept += positions
        failed += errors
    return (np.concatenate(feats) if feats else np.empty((0, 0), dtype=np.float32)), kept, failed


@dataclass(frozen=True)
class SuggestRecord:
    out_dir: str
    csv_path: str
    sheet_path: str
    n_suggested: int
    n_embedded: int  # pool images decoded and embedded
    left_out: tuple[str, ...]  # pool files not considered, and why


def check_paths(encoder_path: str | Path, pool_dir: str | Path, out_dir: str | Path) -> None:
    """The cheap refusals, before any image is read: no encoder, an ``out_dir`` inside the pool
    (the pool is never written to), or an ``out_dir`` that holds anything."""
    encoder, pool, out = Path(encoder_path), Path(pool_dir), Path(out_dir)
    if not encoder.is_file():
        raise SuggestError(f"{encoder}: no pretrained encoder; run `pretrainflow run` or `pretrainflow stage "
                           "pretrain` first, or pass --encoder PATH")
    if pool.is_dir() and out.resolve().is_relative_to(pool.resolve()):
        raise SuggestError(f"{out}: inside the pool {pool}, which is never written to; pass an --out "
                           "folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SuggestError(f"{out}: already exists and is not empty (earlier suggestions?); label and move "
                           "those images first, then remove the folder, or pass another --out")


def _load(encoder_path: Path) -> Encoder:
    try:
        return load_encoder(encoder_path)
    except Exception as exc:  # torch.load's errors vary with the file; all mean the same here
        raise SuggestError(f"{encoder_path}: not an encoder saved by pretraining ({type(exc).__name__}); "
                           "pass the encoder.pt that `pretrainflow stage pretrain` writes") from exc


def _write(out: Path, picks: Picks, files: Sequence[Path], sheet: np.ndarray) -> tuple[Path, Path]:
    """Copy the picked files into ``out`` as ``<rank>_<name>`` (content only: the pool's files
    are read, never moved or changed), with ``suggestions.csv`` and the contact sheet."""
    width = len(str(len(picks.index)))
    rows = []
    for rank, (i, cluster, size, gap) in enumerate(zip(picks.index, picks.cluster, picks.cluster_size,
                                                        picks.distance, strict=True), 1):
        name = f"{rank:0{width}d}_{files[i].name}"
        shutil.copyfile(files[i], out / name)
        rows.append({"rank": rank, "file": name, "pool_path": str(files[i]), "cluster": int(cluster),
                     "cluster_size": int(size), "distance_to_centre": round(float(gap), 6)})
    with open(out / CSV_NAME, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    titles = [f"#{r['rank']} (cluster of {r['cluster_size']})" for r in rows]
    return out / CSV_NAME, suggestion_sheet(sheet, titles, out / SHEET_NAME)


def suggest_labels(pool_dir: str | Path, encoder_path: str | Path, n: int, out_dir: str | Path,
                   image_size: int, resize: str, seed: int = 0, device: torch.device | None = None,
                   batch: int = 256, dtype: torch.dtype | None = None, labeled: pd.DataFrame | None = None,
                   pool_cache: Path | None = None) -> SuggestRecord:
    """Embed every image of ``pool_dir`` with the encoder at ``encoder_path`` (decoded at
    ``image_size`` by ``resize``, the recipe it was trained on), pick ``n`` by ``pick_typical``
    and write them to ``out_dir`` (absent or empty; written whole or not at all):
    ``suggestions.csv`` (rank, file, pool_path, cluster, cluster_size, distance_to_centre),
    ``contact_sheet.png`` and the ``n`` files copied. With ``labeled`` (the labeled images'
    manifest, every split), pool images that copy one of them are never suggested
    (``without_copies``). ``SuggestError`` (a ``ValueError``) for a
    missing encoder, a bad ``out_dir`` or budget; ``DataError`` for a missing or empty pool."""
    pool, out = Path(pool_dir), Path(out_dir)
    check_paths(encoder_path, pool, out)
    found = pool_images(pool)
    if labeled is not None:
        found = without_copies(found, pool, labeled, pool_cache)
    check_budget(n, len(found.files))
    encoder, device = _load(Path(encoder_path)), device or torch.device("cpu")
    feats, kept, failed = embed_files(encoder, found.files, image_size, resize, device, batch, dtype)
    files = [found.files[i] for i in kept]
    picks = pick_typical(feats, n, seed)
    channels = encoder.spec.in_channels
    sheet = np.stack([load_image(files[i], image_size, channels, resize) for i in picks.index])
    with atomic_folder(out) as tmp:
        _write(tmp, picks, files, sheet)
    return SuggestRecord(str(out), str(out / CSV_NAME), str(out / SHEET_NAME), n, len(files),
                         tuple(found.left_out + failed))
