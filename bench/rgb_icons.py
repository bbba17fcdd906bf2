"""An RGB set from a Debian icon theme, labelled by icon context (actions, apps, devices, ...):
does pretraining pay off on small colour images, against the same network from scratch and a
linear model on raw pixels, all with the same 10% of the labels?

    apt-get install mate-icon-theme faenza-icon-theme
    python bench/rgb_icons.py --set pretrain.epochs=200 --set pretrain.batch_size=128

How the set is built: every PNG of one size (48 px) of each theme, by context (mate's
``<size>/<context>/``, Faenza's ``<context>/<size>/``; symlinks resolved, byte-identical files
kept once), one folder per context; contexts with fewer than ``--min-per-class`` icons are left
out. Only one size is used, so no icon is in two splits at two sizes. The images are written
to a temporary folder and never committed.

Everything else is the pipeline's own code and params.yaml, with the RGB settings below
(``--set`` overrides any): 32 px, 3 channels, the ``simclr`` augmentation preset, the
``natural`` fine-tuning augmentation. Imports only pipeline_tasks, torch, numpy, pandas, Pillow.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.config import PipelineConfig, load_config  # noqa: E402
from pipeline_tasks.data.cache import load_split  # noqa: E402
from pipeline_tasks.data.listing import class_folders  # noqa: E402
from pipeline_tasks.data.manifest import build_manifest  # noqa: E402
from pipeline_tasks.data.preprocess import preprocess_data  # noqa: E402
from pipeline_tasks.data.validate import validate_manifest  # noqa: E402
from pipeline_tasks.evaluation.sweep import Sweep, label_sweep, summarize  # noqa: E402
from pipeline_tasks.finetune.subsets import labeled_subset, stratified_subset  # noqa: E402
from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RGB = ["data.image_size=32", "data.channels=3", "pretrain.augment=simclr", "finetune.augment=natural",
       "finetune.label_fraction=0.1", "validate.max_imbalance_ratio=100", "validate.min_images_per_class=20"]


def _context_dirs(theme: Path, size: str) -> dict[str, Path]:
    """``{context: folder of size-px PNGs}``, for themes laid out ``<size>/<context>`` (mate)
    or ``<context>/<size>`` (Faenza, where sizes are plain numbers)."""
    if (theme / size).is_dir():
        return {p.name: p for p in (theme / size).iterdir() if p.is_dir()}
    plain = size.split("x")[0]
    return {p.name: p / plain for p in theme.iterdir() if (p / plain).is_dir()}


def build_icon_set(themes: list[Path], size: str, out: Path, min_per_class: int) -> dict[str, int]:
    """Copy the themes' ``size`` icons into ``out/<context>/``, each distinct file once."""
    seen: set[str] = set()
    files: dict[str, list[Path]] = {}
    for theme in themes:
        for context, folder in sorted(_context_dirs(theme, size).items()):
            for f in sorted(folder.glob("*.png")):
                if not f.resolve().is_file():  # a theme's link to an icon it does not ship
                    continue
                digest = hashlib.sha256(f.resolve().read_bytes()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    files.setdefault(context, []).append(f)
    counts = {}
    for context, found in sorted(files.items()):
        if len(found) >= min_per_class:
            (out / context).mkdir(parents=True)
            for i, f in enumerate(found):
                shutil.copyfile(f.resolve(), out / context / f"{i:04d}-{f.name}")
            counts[context] = len(found)
    return counts


def pixel_baseline(pre: Path, fraction: float, seed: int, val_per_class: int | None) -> float:
    """Test accuracy of a linear model (softmax regression) on raw pixels, trained on the same
    labeled subset and selected on the same validation labels as the networks."""
    torch.manual_seed(seed)
    (x, y), (vx, vy), (tx, ty) = (load_split(pre, s) for s in ("train", "val", "test"))
    idx, vidx = labeled_subset(y, fraction, seed), stratified_subset(vy, seed, per_class=val_per_class)

    def flat(a: torch.Tensor) -> torch.Tensor:
        return a.flatten(1).float() / 255.0

    mean, std = flat(x[idx]).mean(0), flat(x[idx]).std(0).clamp_min(1e-3)
    xs, vs, ts = ((flat(a) - mean) / std for a in (x[idx], vx[vidx], tx))
    model = torch.nn.Linear(xs.shape[1], int(y.max()) + 1)
    best, best_state = -1.0, model.state_dict()
    for wd in (1e-4, 1e-2, 1e-1, 1.0):  # the penalty is chosen on validation, as a user would
        model.reset_parameters()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=wd)
        for _ in range(500):
            loss = torch.nn.functional.cross_entropy(model(xs), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float((model(vs).argmax(1) == vy[vidx]).float().mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    with torch.no_grad():
        return float((model(ts).argmax(1) == ty).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--theme", type=Path, action="append", default=[],
                        help="an icon theme folder (repeatable; default: mate and Faenza)")
    parser.add_argument("--size", default="48x48", help="the theme's size folder to read")
    parser.add_argument("--min-per-class", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    themes = args.theme or [Path("/usr/share/icons/mate"), Path("/usr/share/icons/Faenza")]
    missing = [t for t in themes if not t.is_dir()]
    if missing:
        raise SystemExit(f"{missing} not found: apt-get install mate-icon-theme faenza-icon-theme, "
                         "or pass --theme")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counts = build_icon_set(themes, args.size, root / "data", args.min_per_class)
        print(f"{sum(counts.values())} icons in {len(counts)} contexts from {[str(t) for t in themes]} "
              f"at {args.size}: {counts}")
        sets = [*RGB, *args.overrides, f"data.dir={root / 'data'}"]
        cfg: PipelineConfig = load_config(REPO / "params.yaml", sets)
        manifest = build_manifest(root / "data")
        report, kept, _ = validate_manifest(manifest, class_folders(root / "data"), cfg.validate_)
        if not report["success"]:
            raise SystemExit(f"the icon set fails validation: {report['failures']}")
        kept.to_csv(root / "manifest.csv", index=False)
        pre = preprocess_data(root / "manifest.csv", root / "data", cfg.data, cfg.preprocess, root / "pre")
        print(f"splits: train {pre.n_train}, val {pre.n_val}, test {pre.n_test}; "
              f"{cfg.pretrain.method} {cfg.pretrain.encoder} for {cfg.pretrain.epochs} epochs")
        start = time.perf_counter()
        encoder = pretrain_encoder(pre.out_dir, cfg.pretrain, root / "pt")
        print(f"pretrained in {time.perf_counter() - start:.0f} s; "
              f"k-NN val accuracy {encoder.knn_accuracy:.3f}")
        seeds = [int(s) for s in args.seeds.split(",")]
        sweep = Sweep(Path(pre.out_dir), Path(encoder.encoder_path), pre.classes, cfg.finetune, cfg.pool,
                      root / "sweep")
        rows = label_sweep(sweep, [cfg.finetune.label_fraction], seeds, ["linear", "full", "scratch"])
        fraction, val_per_class = cfg.finetune.label_fraction, cfg.finetune.val_per_class
        pixels = [pixel_baseline(Path(pre.out_dir), fraction, s, val_per_class) for s in seeds]
    table = summarize(rows)
    print(f"\n{cfg.finetune.label_fraction:.0%} of the training labels ({int(table['train_labels'].iloc[0])} "
          f"images), test accuracy, mean +- std over seeds {seeds}:")
    for row in table.itertuples():
        print(f"  {row.mode:<8} {row.mean:.4f} +- {row.std:.4f}   "
              f"lift over scratch {row.pretraining_lift_points:+.1f} points")
    print(f"  pixels   {np.mean(pixels):.4f} +- {np.std(pixels, ddof=1):.4f}   "
          "(softmax regression on raw pixels, weight decay chosen on validation)")


if __name__ == "__main__":
    main()
