"""Label efficiency: linear probe, full fine-tune and the same network from scratch, at label
fractions x seeds, on one SimCLR encoder pretrained on an unlabeled pool. Prints the table
(mean +- std over seeds, lift over scratch in points), writes a CSV and a plot PNG.

    python bench/label_efficiency.py                    # Fashion-MNIST (Debian's package), CPU preset
    python bench/label_efficiency.py --pool 60000 --pretrain-epochs 100 --full-epochs 30   # GPU
    python bench/label_efficiency.py --data mnist-5k    # the built-in digits

Data. Fashion-MNIST from Debian's `dataset-fashion-mnist`: the pool is the first ``--pool``
of the 60,000 training images (all 60,000 with ``--pool 60000``), pretrained on without labels;
the labeled fractions are drawn from that same pool (the usual semi-supervised protocol);
``--val-per-class`` other training images per class form the validation split (of which
``finetune.val_per_class`` are used for model selection); the 10,000 test images are the test
split. Without the package it falls back to ``mnist-5k`` (70/10/20 split) and says so.

Recipe: params.yaml's ``pretrain`` and ``finetune`` sections (override with ``--set``); every
mode gets the same labels, seed and step budget. Only pipeline_tasks, torch, numpy, pandas and
Pillow are imported, so it also runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.config import load_config  # noqa: E402
from pipeline_tasks.data.cache import save_split  # noqa: E402
from pipeline_tasks.data.datasets import load_mnist_5k  # noqa: E402
from pipeline_tasks.data.idx import find_idx_pairs, read_idx  # noqa: E402
from pipeline_tasks.evaluation.plots import label_efficiency_chart  # noqa
from pipeline_tasks.evaluation.sweep import label_sweep, summarize  # noqa: E402
from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def _save(out: Path, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    save_split(out, name, images[:, None], labels)  # [N, H, W] grayscale -> [N, 1, H, W]


def prepare(args: argparse.Namespace, out: Path) -> str:
    """Write the tensor cache the pipeline's stages read; returns a description of the data."""
    rng = np.random.default_rng(0)
    if args.data == "fashion" and FASHION.is_dir():
        (train_x, train_y), (test_x, test_y) = [(read_idx(i), read_idx(lab)) for i, lab in
                                                find_idx_pairs(FASHION)]
        order = rng.permutation(len(train_x))
        val = np.concatenate([order[train_y[order] == c][:args.val_per_class] for c in range(10)])
        pool = np.setdiff1d(order, val, assume_unique=True)[:args.pool]
        _save(out, "train", train_x[pool], train_y[pool])
        _save(out, "val", train_x[val], train_y[val])
        _save(out, "test", test_x, test_y)
        what = (f"Fashion-MNIST: pool {len(pool)} of the 60,000 training images, val {len(val)}, "
                f"test {len(test_x)}")
    else:
        if args.data == "fashion":
            print(f"{FASHION} not found (apt-get install dataset-fashion-mnist): falling back to mnist-5k")
        x, y = load_mnist_5k()
        order = rng.permutation(len(x))
        cut = [int(len(x) * 0.7), int(len(x) * 0.8)]
        for name, idx in zip(("train", "val", "test"), np.split(order, cut), strict=True):
            _save(out, name, x[idx], y[idx])
        what = "mnist-5k: pool = train split 3,500, val 500, test 1,000"
    return what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["fashion", "mnist-5k"], default="fashion")
    parser.add_argument("--pool", type=int, default=10_000, help="training images in the pool (max 60,000)")
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--fractions", default="0.01,0.1,1.0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default="linear,full,scratch")
    parser.add_argument("--full-epochs", type=int, default=10,
                        help="fine-tuning epochs at fraction 1.0 (the others use finetune.epochs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    cfg = load_config(REPO / "params.yaml", args.overrides)
    pretrain_cfg = cfg.pretrain if args.pretrain_epochs is None else cfg.pretrain.model_copy(
        update={"epochs": args.pretrain_epochs})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp)
        what = prepare(args, pre)
        print(what, flush=True)
        start = time.perf_counter()
        encoder = pretrain_encoder(pre, pretrain_cfg, pre / "pretrain")
        print(f"pretrained {pretrain_cfg.epochs} epochs on {encoder.n_images} images in "
              f"{time.perf_counter() - start:.0f} s (k-NN val accuracy {encoder.knn_accuracy:.3f})",
              flush=True)
        fractions = [float(f) for f in args.fractions.split(",")]
        rows = label_sweep(pre, encoder.encoder_path, tuple(str(c) for c in range(10)), cfg.finetune,
                           fractions, [int(s) for s in args.seeds.split(",")], args.modes.split(","),
                           on_row=lambda r: print("  ", r, flush=True), epochs={1.0: args.full_epochs})
    table = summarize(rows)
    rows.to_csv(args.out / "label_efficiency_runs.csv", index=False)
    table.to_csv(args.out / "label_efficiency.csv", index=False)
    label_efficiency_chart(table, args.out / "label_efficiency.png", what)
    report(table, what, time.perf_counter() - start)
    print(f"wrote {args.out / 'label_efficiency.csv'}, label_efficiency_runs.csv and label_efficiency.png")


def report(table: pd.DataFrame, what: str, seconds: float) -> None:
    print(f"\n{what}; {seconds / 60:.1f} min")
    print(f"{'fraction':>8} {'labels':>6} | " + " | ".join(f"{m:^15}" for m in ("linear", "full", "scratch"))
          + " | lift linear | lift full")
    for fraction, rows in table.groupby("fraction"):
        by = rows.set_index("mode")
        cells = [f"{by.at[m, 'mean']:.4f} ± {by.at[m, 'std']:.4f}" if m in by.index else f"{'-':^15}"
                 for m in ("linear", "full", "scratch")]
        lifts = [f"{by.at[m, 'lift_points']:+11.1f}" if m in by.index and "scratch" in by.index
                 else f"{'-':>11}" for m in ("linear", "full")]
        print(f"{fraction:>8g} {int(rows['train_labels'].iloc[0]):>6} | " + " | ".join(cells)
              + " | " + " | ".join(lifts))


if __name__ == "__main__":
    main()
