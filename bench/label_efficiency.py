"""Label efficiency: raw pixels, the network from scratch, the pretrained encoder (linear probe,
full fine-tune) and the pool stage on top of full and of scratch, at label budgets x seeds, on
one encoder pretrained on an unlabeled pool. Prints the table (mean +- std over seeds, lift
over scratch in points), writes a CSV and a plot PNG.

    python bench/label_efficiency.py --preset objects   # Fashion-MNIST, 10 and 100 labels per class
    python bench/label_efficiency.py --data mnist-5k --budgets 4   # the built-in digits
    python bench/label_efficiency.py --pool 60000 --pretrain-epochs 200 --set pretrain.encoder=resnet18

Data. Fashion-MNIST from Debian's `dataset-fashion-mnist`: the pool is the first ``--pool``
of the 60,000 training images (all 60,000 with ``--pool 60000``), pretrained on without labels;
the labeled fractions are drawn from that same pool (the usual semi-supervised protocol);
``--val-per-class`` other training images per class form the validation split (of which
``finetune.val_per_class`` are used for model selection); the 10,000 test images are the test
split. Without the package it falls back to ``mnist-5k`` (70/10/20 split) and says so.

Recipe: params.yaml's ``pretrain``, ``finetune`` and ``pool`` sections (override with
``--preset``, then ``--set``); every model gets the same labels, seed and step budget; a budget
above 1 is labels per class, below 1 a fraction of the training split. Only pipeline_tasks,
torch, numpy, pandas and Pillow are imported, so it also runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from pipeline_tasks.evaluation.sweep import MODES, Sweep, label_sweep, summarize  # noqa: E402
from pipeline_tasks.recipes import PRESETS, with_preset  # noqa: E402
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
    parser.add_argument("--budgets", default="10,100", help="labels per class (or fractions below 1)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cache", type=Path, default=None,
                        help="a preprocessed cache to use instead of --data (a run's artifacts/preprocessed, "
                             "copied: that run's own splits)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a recipe of settings under the --set ones, as pretrainflow run --preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="label_efficiency", help="file name stem of the results")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the cache and the encoder here and reuse them when they exist (default: a "
                             "temporary folder)")
    args = parser.parse_args()
    cfg = load_config(REPO / "params.yaml", with_preset(args.preset, args.overrides))
    pretrain_cfg = cfg.pretrain if args.pretrain_epochs is None else cfg.pretrain.model_copy(
        update={"epochs": args.pretrain_epochs})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = args.work or Path(tmp)
        pre.mkdir(parents=True, exist_ok=True)
        if args.cache:  # a run's own splits: the bench then differs from that run in its seeds alone
            shutil.copytree(args.cache, pre, dirs_exist_ok=True)
            what = f"the cache {args.cache}"
        else:
            what = prepare(args, pre)
        print(what, flush=True)
        start = time.perf_counter()
        encoder_path = pre / "pretrain" / "encoder.pt"
        if not (args.work and encoder_path.is_file()):
            encoder = pretrain_encoder(pre, pretrain_cfg, pre / "pretrain")
            print(f"pretrained {pretrain_cfg.epochs} epochs on {encoder.n_images} images in "
                  f"{time.perf_counter() - start:.0f} s (k-NN val accuracy {encoder.knn_accuracy:.3f})",
                  flush=True)
        names = pre / "classes.json"  # a run's cache names its classes; the bench's own are digits
        digits = tuple(str(c) for c in range(10))
        classes = tuple(json.loads(names.read_text())) if names.is_file() else digits
        sweep = Sweep(pre, encoder_path, classes, cfg.finetune, cfg.pool, pre / "sweep")
        rows = label_sweep(sweep, [float(b) for b in args.budgets.split(",")],
                           [int(s) for s in args.seeds.split(",")], args.modes.split(","),
                           on_row=lambda r: print("  ", r, flush=True))
    table = summarize(rows)
    rows.to_csv(args.out / f"{args.name}_runs.csv", index=False)
    table.to_csv(args.out / f"{args.name}.csv", index=False)
    label_efficiency_chart(table, args.out / f"{args.name}.png", what)
    report(table, what, time.perf_counter() - start)
    print(f"wrote {args.out / args.name}.csv, {args.name}_runs.csv and {args.name}.png")


def report(table: pd.DataFrame, what: str, seconds: float) -> None:
    print(f"\n{what}; {seconds / 60:.1f} min; test accuracy, mean ± std over seeds (pretraining's lift: "
          "against scratch, or scratch + pool for a route with the pool stage)")
    modes = [m for m in MODES if m in set(table["mode"])]
    print(f"{'budget':>7} {'labels (train + val)':>20} | " + " | ".join(f"{m:^22}" for m in modes))
    for budget, rows in table.groupby("budget"):
        by = rows.set_index("mode")
        lift = by["pretraining_lift_points"]
        cells = [f"{by.at[m, 'mean']:.4f} ± {by.at[m, 'std']:.4f} ({lift[m]:+.1f})"
                 if m in by.index else f"{'-':^22}" for m in modes]
        labels = f"{int(rows['train_labels'].iloc[0])} + {int(rows['val_labels'].iloc[0])}"
        print(f"{budget:>7g} {labels:>20} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
