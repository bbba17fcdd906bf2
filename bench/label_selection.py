"""Which images to label: random picks against `suggest-labels` picks, at 1, 2 and 5 labels per
class x 3 seeds, on one SimCLR encoder. Prints the table (mean +- std over seeds, difference in
points), writes bench/results/label_selection.csv, label_selection_runs.csv and .png.

    nice python bench/label_selection.py                 # mnist-5k, 40 pretraining epochs (~5 min)
    python bench/label_selection.py --epochs 5 --seeds 0 # a quick look

Data: the built-in mnist-5k split 70/10/20 (train 3,500, val 500, test 1,000; the split of
bench/label_efficiency.py). The encoder is pretrained on the 3,500 training images without
their labels (params.yaml's ``pretrain`` recipe). Per budget ``k`` labels per class and seed:

- random: ``k`` training images per class, drawn at random (stratified, as a careful user would);
- suggested: ``pipeline_tasks.finetune.suggest.pick_typical`` on the encoder's embeddings of the
  training images, ``10 k`` clusters (k-means seeded by the seed), their labels looked up;
  nothing makes these picks balanced, so the table says how many classes they cover.

Each labeled subset is fine-tuned with params.yaml's ``finetune`` recipe in ``full`` mode (the
default), the best of its validation checks kept (``finetune.val_per_class`` validation labels per
class, the same for both arms), and scored once on the test split.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.config import FinetuneConfig, load_config  # noqa: E402
from pipeline_tasks.data.cache import save_split  # noqa: E402
from pipeline_tasks.data.datasets import load_mnist_5k  # noqa: E402
from pipeline_tasks.evaluation.evaluate import score  # noqa: E402
from pipeline_tasks.evaluation.plots import label_efficiency_chart  # noqa: E402
from pipeline_tasks.finetune.subsets import stratified_subset  # noqa: E402
from pipeline_tasks.finetune.suggest import pick_typical  # noqa: E402
from pipeline_tasks.finetune.train import finetune_classifier  # noqa: E402
from pipeline_tasks.models.inference import embed  # noqa: E402
from pipeline_tasks.models.weights import load_encoder  # noqa: E402
from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = tuple(str(c) for c in range(10))
Split = tuple[np.ndarray, np.ndarray]


def prepare(out: Path) -> dict[str, Split]:
    """mnist-5k as train/val/test ``(uint8 [N, 1, 28, 28], int64 [N])``, written to ``out``."""
    x, y = load_mnist_5k()
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(0).permutation(len(x))
    splits = {}
    for name, idx in zip(("train", "val", "test"), np.split(order, [3500, 4000]), strict=True):
        splits[name] = (x[idx][:, None], y[idx])
        save_split(out, name, *splits[name])
    return splits


def picks(method: str, per_class: int, seed: int, labels: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Indices into the training split of the images that get a label."""
    n = len(CLASSES) * per_class
    if method == "random":
        return stratified_subset(torch.from_numpy(labels), seed, per_class=per_class).numpy()
    if method == "random-any":
        return np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))
    return np.sort(pick_typical(feats, n, seed).index)


def finetune_on(idx: np.ndarray, splits: dict[str, Split], encoder: Path, cfg: FinetuneConfig,
                work: Path, seed: int) -> tuple[float, float]:
    """Fine-tune on the training images ``idx`` (all their labels) -> (best val, test accuracy)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("val", "test"):
        save_split(work, name, *splits[name])
    save_split(work, "train", splits["train"][0][idx], splits["train"][1][idx])
    run_cfg = cfg.model_copy(update={"label_fraction": 1.0, "seed": seed})
    rec = finetune_classifier(work, encoder, CLASSES, run_cfg, work / "out", mode="full")
    probs, y, _ = score(work, rec.classifier_path, 512)
    return rec.best_val_accuracy, float((probs.argmax(1) == y).mean())


def sweep(splits: dict[str, Split], encoder: Path, cfg: FinetuneConfig, budgets: list[int],
          seeds: list[int], methods: list[str], work: Path) -> pd.DataFrame:
    """One row per (labels per class, seed, method)."""
    train_x, train_y = splits["train"]
    feats = embed(load_encoder(encoder), train_x, torch.device("cpu")).numpy()
    rows = []
    for per_class in budgets:
        for seed in seeds:
            for method in methods:
                idx = picks(method, per_class, seed, train_y, feats)
                run_dir = work / f"{method}-{per_class}-{seed}"
                val, test = finetune_on(idx, splits, encoder, cfg, run_dir, seed)
                counts = np.bincount(train_y[idx], minlength=len(CLASSES))
                row = {"per_class": per_class, "labels": len(idx), "seed": seed, "method": method,
                       "classes_covered": int((counts > 0).sum()), "most_in_one_class": int(counts.max()),
                       "val_accuracy": val, "test_accuracy": test}
                print("  ", row, flush=True)
                rows.append(row)
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per budget: each method's mean and std of test accuracy and classes covered, and the
    difference suggested - random in points."""
    agg = runs.groupby(["per_class", "method"]).agg(
        mean=("test_accuracy", "mean"), std=("test_accuracy", "std"),
        classes_mean=("classes_covered", "mean"), classes_min=("classes_covered", "min")).unstack("method")
    table = pd.DataFrame({"labels": runs.groupby("per_class")["labels"].first()})
    for stat, method in agg.columns:
        table[f"{method}_{stat}"] = agg[(stat, method)]
    for method in sorted(set(runs["method"]) - {"suggested"}):
        table[f"suggested_minus_{method}_points"] = (table["suggested_mean"] - table[f"{method}_mean"]) * 100
    return table.reset_index()


def report(table: pd.DataFrame, methods: list[str], seconds: float) -> None:
    print(f"\nmnist-5k (train 3,500 / val 500 / test 1,000), test accuracy, mean ± std over seeds "
          f"[classes covered: mean, min]; {seconds / 60:.1f} min")
    others = [m for m in methods if m != "suggested"]
    print(f"{'per class':>9} {'labels':>6} | " + " | ".join(f"{m:^25}" for m in methods) + " | "
          + " | ".join(f"suggested - {m} (pts)" for m in others))
    for r in table.to_dict("records"):
        cells = [f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f} [{r[f'{m}_classes_mean']:.1f}, "
                 f"{r[f'{m}_classes_min']}]" for m in methods]
        diffs = [f"{r[f'suggested_minus_{m}_points']:>+{len(m) + 18}.1f}" for m in others]
        print(f"{r['per_class']:>9} {r['labels']:>6} | " + " | ".join(cells) + " | " + " | ".join(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: params.yaml)")
    parser.add_argument("--per-class", default="1,2,5", help="labels per class (default: 1,2,5)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="random,suggested",
                        help="random (stratified: the same number per class), random-any (any class: what a "
                             "user without labels gets), suggested (default: random,suggested)")
    parser.add_argument("--encoder", type=Path, default=None,
                        help="an encoder already pretrained on this split's training images (e.g. by "
                             "bench/label_efficiency.py --data mnist-5k --work DIR: DIR/pretrain/encoder.pt)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    cfg = load_config(REPO / "params.yaml", args.overrides)
    pretrain_cfg = cfg.pretrain.model_copy(update={"epochs": args.epochs or cfg.pretrain.epochs})
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        splits = prepare(work / "base")
        encoder = args.encoder
        if encoder is None:
            rec = pretrain_encoder(work / "base", pretrain_cfg, work / "pretrain")
            encoder = Path(rec.encoder_path)
            print(f"pretrained {pretrain_cfg.epochs} epochs on {rec.n_images} images in "
                  f"{time.perf_counter() - start:.0f} s (k-NN val accuracy {rec.knn_accuracy:.3f})",
                  flush=True)
        budgets, seeds = ([int(v) for v in text.split(",")] for text in (args.per_class, args.seeds))
        methods = args.methods.split(",")
        runs = sweep(splits, encoder, cfg.finetune, budgets, seeds, methods, work)
    table = summarize(runs)
    runs.to_csv(args.out / "label_selection_runs.csv", index=False)
    table.to_csv(args.out / "label_selection.csv", index=False)
    source = f"{pretrain_cfg.epochs} SimCLR epochs" if args.encoder is None else str(args.encoder)
    chart = runs.groupby(["method", "labels"])["test_accuracy"].agg(["mean", "std"]).reset_index()
    label_efficiency_chart(chart.rename(columns={"method": "mode", "labels": "train_labels"}),
                           args.out / "label_selection.png",
                           f"mnist-5k: random against suggested labels ({source})")
    report(table, methods, time.perf_counter() - start)
    print(f"wrote {args.out / 'label_selection.csv'}, label_selection_runs.csv and label_selection.png")


if __name__ == "__main__":
    main()
