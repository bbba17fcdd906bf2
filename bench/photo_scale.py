"""Photos at scale: every stage's images/s and peak memory at N = 2,000, 10,000 and 40,000
photo-like JPEGs, and the one decode path against a plain full PIL decode of the same files.

    python bench/photo_scale.py                                  # 2,000 10,000 40,000 (about 25 min here)
    python bench/photo_scale.py --sizes 500 2000 --work /tmp/ps  # a quick look

The JPEGs are made here, nothing is committed or downloaded: 1024 x 768, quality 90, an EXIF
orientation tag and camera make, a smooth random colour field of their own (so no two are near
copies) under a class's texture (stripes at one of 4 angles) and sensor noise. One set of the
largest N is written once; each smaller N takes a prefix of it.

Each stage is run as ``pretrainflow stage NAME`` (what ``dvc repro`` runs), one process per
stage, in a project of its own per N with one MLflow store for all (so from the second N on,
registration re-scores the earlier champion). A sampler reads every process of the stage's tree
every 50 ms and keeps the peak of their summed **anonymous** resident memory (RSS less its
file-backed and shared pages: ``psutil`` ``rss - shared``): the page cache of the memory-mapped
image cache, which the kernel may drop at will, is not the process's, and is left out, as the
goal asks. The stages train at ``--image-size`` from a ``--cache-size`` cache (32 from 40 by
default, a CPU's share; the memory behaviour does not depend on it), one pretraining epoch,
10 labels per class, a short pool stage.

The decode comparison runs the one decode path (``decode.load_image``: JPEG draft mode, EXIF
orientation, RGB, centre crop) and a plain full decode (``Image.open``, ``exif_transpose``,
``convert``, ``ImageOps.fit``) on the same 1,000 files, alternating file by file, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.photo_decode import rates  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("north", "east", "northeast", "northwest")  # stripe angles 90, 0, 45, 135 degrees
STAGES = ("validate", "preprocess", "pretrain", "finetune", "pool", "evaluate", "register")


def _textures(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(stripes [4 classes, 3 frequencies, 768, 1024], noise [4, 768, 1024])``, int16, made once per
    worker: each photo picks one of each (the noise rolled by a random offset)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:768, 0:1024].astype(np.float32)
    stripes = np.stack([np.stack([np.sin((xx * np.cos(a) + yy * np.sin(a)) * f) * 40
                                  for f in (0.15, 0.22, 0.3)])
                        for a in np.deg2rad((90, 0, 45, 135))]).astype(np.int16)
    return stripes, rng.integers(-6, 7, (4, 768, 1024), dtype=np.int16)


TEXTURES: tuple[np.ndarray, np.ndarray] | None = None


def _photo(args: tuple[Path, int]) -> None:
    """One 1024 x 768 JPEG: its own smooth colour field, its class's stripes, noise, EXIF."""
    global TEXTURES
    TEXTURES = TEXTURES or _textures()
    stripes, noise = TEXTURES
    path, i = args
    rng = np.random.default_rng(i)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((1024, 768),
                                                                                    Image.BILINEAR)
    grey = stripes[i % len(CLASSES), rng.integers(3)] + np.roll(noise[rng.integers(4)], rng.integers(768), 0)
    pixels = np.asarray(field, np.int16) + grey[..., None]
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = int(rng.choice([1, 6, 8])), "pretrainflow bench"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90, exif=exif)


def make_photos(root: Path, n: int) -> list[Path]:
    """``root/<class>/NNNNNN.jpg`` for i < n, written once (existing files are kept), on every core."""
    paths = [root / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg" for i in range(n)]
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    todo = [(p, i) for i, p in enumerate(paths) if not p.is_file()]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_photo, todo, chunksize=64))
    return paths


def _project(work: Path, n: int, photos: list[Path]) -> Path:
    """A project of its own for ``n`` images: params.yaml, and ``data/`` hardlinked to a prefix."""
    project = work / f"n{n}"
    shutil.rmtree(project, ignore_errors=True)
    for path in photos[:n]:
        dest = project / "data" / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, dest)
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    return project


class PeakMemory:
    """The peak, over a process tree sampled every ``every`` seconds, of its summed anonymous RSS."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.root, self.every, self.peak = psutil.Process(pid), every, 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.root.is_running() and self.root.status() != psutil.STATUS_ZOMBIE:
            total = 0
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    info = proc.memory_info()
                    total += info.rss - info.shared
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)


def run_stage(project: Path, stage: str, overrides: list[str], env: dict[str, str]) -> tuple[float, int]:
    """``(seconds, peak anonymous bytes)`` of ``pretrainflow stage STAGE`` in ``project``."""
    cmd = [str(Path(sys.executable).with_name("pretrainflow")), "stage", stage]
    cmd += [a for o in overrides for a in ("--set", o)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    memory = PeakMemory(proc.pid)
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    memory.thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed at {project}:\n{out[-3000:]}")
    return seconds, memory.peak


def stage_images(project: Path, stage: str, n: int) -> int | None:
    """How many images ``stage`` worked through, for its images/s: every file (validate,
    preprocess), the training split and pool (one pretraining epoch), the test split (evaluate;
    register, which re-scores the champion on it); none for the stages with a fixed step budget
    (fine-tuning on 40 labels, the pool stage's 20 steps), whose time does not depend on N."""
    if stage in ("validate", "preprocess"):
        return n
    sizes = json.loads((project / "artifacts" / "preprocessed" / "splits.json").read_text())
    return {"pretrain": sizes["n_train"] + sizes["n_pool"], "finetune": None, "pool": None}.get(
        stage, sizes["n_test"])


def _rate(row: dict[str, float | None]) -> str:
    return f"{row['images_per_s']:7.0f} img/s" if row["images_per_s"] is not None else f"{'-':>7s} img/s"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Per stage and N: seconds, images/s and peak anonymous memory; then the memory ratio of the
    largest N to the smallest."""
    sizes = sorted({r["n"] for r in rows})
    print(f"\n{'stage':10s} " + " ".join(f"{'n=' + str(n):>33s}" for n in sizes)
          + f"  peak memory {sizes[-1]}/{sizes[0]}")
    for stage in STAGES:
        at = {r["n"]: r for r in rows if r["stage"] == stage}
        cells = " ".join(f"{at[n]['seconds']:6.0f} s {_rate(at[n])} {at[n]['peak_anon_mb']:5d} MB"
                         for n in sizes)
        ratio = at[sizes[-1]]["peak_anon_mb"] / max(at[sizes[0]]["peak_anon_mb"], 1)
        print(f"{stage:10s} {cells}  {ratio:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 40000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/photo_scale"))
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--cache-size", type=int, default=40)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    photos = make_photos(args.work / "photos", max(args.sizes))
    overrides = [f"data.image_size={args.image_size}", f"data.cache_size={args.cache_size}",
                 "data.channels=3", "validate.min_images_per_class=5", "pretrain.epochs=1",
                 "pretrain.augment=simclr", "pretrain.knn_every_epochs=0", "finetune.labels_per_class=10",
                 "finetune.val_per_class=10", "finetune.augment=natural", "pool.steps=20",
                 "register.require_lift=false"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{args.work / 'mlflow.db'}",
           "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # the stages run this checkout's code, whatever the environment's install points at
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for n in sorted(args.sizes):
        project = _project(args.work, n, photos)
        for stage in STAGES:
            seconds, peak = run_stage(project, stage, overrides, env)
            images = stage_images(project, stage, n)
            rows.append({"n": n, "stage": stage, "seconds": round(seconds, 1), "images": images,
                         "images_per_s": None if images is None else round(images / seconds, 1),
                         "peak_anon_mb": round(peak / 2**20)})
            print(f"n={n:6d} {stage:10s} {seconds:7.1f} s {_rate(rows[-1])} "
                  f"peak {rows[-1]['peak_anon_mb']:5d} MB", flush=True)
    print_table(rows)
    sample = photos[:: max(1, len(photos) // 1000)][:1000]
    plain, ours = rates(sample, args.cache_size)
    print(f"\ndecode at {args.cache_size} px, {len(sample)} files, one thread each: plain full PIL "
          f"{plain:.0f} images/s, the decode path (draft) {ours:.0f} images/s: {ours / plain:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "decode": {"plain": plain, "ours": ours}}, indent=1))


if __name__ == "__main__":
    main()
