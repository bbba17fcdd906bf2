"""Routes to a few-label classifier, compared on the same labels, side by side in one run:
which start pays off, on which data, and what the distilled student keeps of it.

Routes (every one with the same labels, seed, step budget, and model selection on the same
validation labels):

- ``scratch``: today's route, SimCLR on every image from random weights (the compact CNN at
  32 px), fine-tuned; ``scratch+pool``: then the pool stage (FixMatch);
- ``imagenet``: EfficientNet-Lite0's ImageNet weights (the packaged start) fine-tuned, the seed's
  recipe; ``imagenet+pool``;
- ``imagenet+ssl``: the same weights after more SimCLR on all of the data's images
  (domain-adaptive pretraining), fine-tuned; ``imagenet+ssl+pool``;
- ``distilled``: the route best on validation teaches the compact CNN at 32 px on every
  unlabeled image (``learn_from_pool`` with a teacher), a model small and fast on a CPU;
- ``pixels``, ``imagenet-probe``: a logistic regression or k-NN on the pixels and on the frozen
  ImageNet features (references, chosen on validation);
- ``auto``: the start ``pretrain.start: auto`` takes (``ssl.start``: probed on the run's
  labels), and the result of its route (``imagenet+ssl+pool`` or ``scratch+pool``).

Data: two RGB sets built from Debian icon themes (``rgb_icons.py``): ``icons-distinct``
(apps, devices, places, mimetypes: classes that look different) and ``icons-context`` (mate's
and Faenza's 8 contexts, which overlap in meaning); Fashion-MNIST as 3 channels (a subset); and
mnist-5k (1 channel: ``auto`` starts from scratch there without probing). Also each route's
served model: CPU images/s (batch 64, 2 threads, at its input size) and its size.

    apt-get install mate-icon-theme faenza-icon-theme moka-icon-theme dataset-fashion-mnist
    python bench/transfer.py --data icons-distinct,icons-context --budgets 0.1 --name transfer
    python bench/transfer.py --data fashion --budgets 10 --name transfer --append
    python bench/transfer.py --data mnist-5k --budgets 4 --name transfer --append

Writes ``<name>_runs.csv`` (one row per data, labels, seed, route), ``<name>.csv`` (mean and
std over seeds), ``<name>_speed.csv`` and ``<name>.png``. Imports only pipeline_tasks, torch,
numpy, pandas, Pillow and matplotlib: it runs on a bare GPU machine too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rgb_icons import build_icon_set  # noqa: E402

from pipeline_tasks.config import PipelineConfig, load_config  # noqa: E402
from pipeline_tasks.data.datasets import load_mnist_5k, write_labeled_and_pool  # noqa: E402
from pipeline_tasks.data.idx import find_idx_pairs, read_idx  # noqa: E402
from pipeline_tasks.data.manifest import build_manifest  # noqa: E402
from pipeline_tasks.data.nearcopy import label_conflicts  # noqa: E402
from pipeline_tasks.data.preprocess import PreprocessRecord, preprocess_data  # noqa: E402
from pipeline_tasks.evaluation.evaluate import reference_metrics, score  # noqa: E402
from pipeline_tasks.evaluation.sweep import budget_config  # noqa: E402
from pipeline_tasks.finetune.pool import learn_from_pool  # noqa: E402
from pipeline_tasks.finetune.subsets import LABELS  # noqa: E402
from pipeline_tasks.finetune.train import finetune_classifier  # noqa: E402
from pipeline_tasks.models.classifier import load_classifier  # noqa: E402
from pipeline_tasks.models.inference import predict_logits  # noqa: E402
from pipeline_tasks.recipes import IMAGENET_START  # noqa: E402
from pipeline_tasks.runtime import resolve_runtime  # noqa: E402
from pipeline_tasks.ssl.run import build_encoder  # noqa: E402
from pipeline_tasks.ssl.start import choose_start  # noqa: E402
from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: E402
from pipeline_tasks.storage import save_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL, LARGE = 32, 96  # px: the compact CNN's input; Lite0's (ImageNet weights, <= 128 px on a CPU)
NETWORK_ROUTES = ("scratch", "scratch+pool", "imagenet", "imagenet+pool", "imagenet+ssl", "imagenet+ssl+pool")


@dataclass(frozen=True)
class Data:
    """One data set, cached twice from the same manifest (the same splits, rows in one order):
    ``small`` for the compact CNN, ``large`` for Lite0."""

    name: str
    channels: int
    small: PreprocessRecord
    large: PreprocessRecord


def _icon_themes(names: list[str]) -> list[Path]:
    themes = [Path("/usr/share/icons") / n for n in names]
    missing = [str(t) for t in themes if not t.is_dir()]
    if missing:
        raise SystemExit(f"{missing} not found: apt-get install mate-icon-theme faenza-icon-theme "
                         "moka-icon-theme (Debian)")
    return themes


def _capped(folder: Path, classes: set[str] | None, per_class: int) -> None:
    """Keep ``classes`` (all when None), at most ``per_class`` images each (the first by name)."""
    for sub in sorted(folder.iterdir()):
        if classes is not None and sub.name not in classes:
            for f in sub.iterdir():
                f.unlink()
            sub.rmdir()
            continue
        for f in sorted(sub.iterdir())[per_class:]:
            f.unlink()


def _write_arrays(images: np.ndarray, labels: np.ndarray, out: Path, per_class: int, seed: int) -> None:
    """``per_class`` images of each label (seeded) as ``out/<label>/<i>.png``."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                           for c in np.unique(labels)])
    write_labeled_and_pool(images[keep], labels[keep], out)


def build_folder(name: str, out: Path, per_class: int) -> int:
    """Write data set ``name`` as ``out/<class>/<image>``; returns its channels."""
    if name == "icons-distinct":
        build_icon_set(_icon_themes(["Faenza", "Moka", "mate", "Adwaita"]), "48x48", out, 20)
        _capped(out, {"apps", "devices", "places", "mimetypes"}, per_class)
        return 3
    if name == "icons-context":
        build_icon_set(_icon_themes(["mate", "Faenza"]), "48x48", out, 20)
        return 3
    if name == "fashion":
        pairs = find_idx_pairs(Path("/usr/share/datasets/fashion-mnist"))
        images = np.concatenate([read_idx(i) for i, _ in pairs])
        labels = np.concatenate([read_idx(lab) for _, lab in pairs])
        _write_arrays(images, labels, out, per_class, 0)
        return 3
    images, labels = load_mnist_5k()
    _write_arrays(images, labels, out, min(per_class, 500), 0)
    return 1


def prepare(name: str, root: Path, per_class: int) -> Data:
    """The folder, its manifest (pictures filed under two classes left out), two caches."""
    folder = root / name / "data"
    shutil.rmtree(folder, ignore_errors=True)  # the bench's own copy: a run stopped half-way left one
    channels = build_folder(name, folder, per_class)
    manifest = build_manifest(folder)
    manifest = manifest[manifest["decodes"].astype(bool)]
    conflicts = label_conflicts(manifest)
    manifest[~conflicts].to_csv(root / name / "manifest.csv", index=False)
    caches = []
    for size in (SMALL, LARGE):
        cfg = load_config(REPO / "params.yaml", [f"data.image_size={size}", f"data.channels={channels}"])
        caches.append(preprocess_data(root / name / "manifest.csv", folder, cfg.data, cfg.preprocess,
                                      root / name / f"pre{size}"))
    small = caches[0]
    print(f"{name}: {small.n_train + small.n_val + small.n_test} images in {len(small.classes)} classes "
          f"({int(conflicts.sum())} filed under two classes left out); train {small.n_train}, val "
          f"{small.n_val}, test {small.n_test}", flush=True)
    return Data(name, channels, caches[0], caches[1])


def settings(data: Data, args: argparse.Namespace) -> PipelineConfig:
    """params.yaml for this data: RGB views and flips for colour sets, the bench's budgets."""
    rgb = data.channels == 3
    sets = [f"data.channels={data.channels}", "pretrain.device=cpu", "finetune.device=cpu", "pool.device=cpu",
            f"pool.steps={args.pool_steps}", f"pool.unlabeled_batch={args.unlabeled_batch}",
            *(["pretrain.augment=simclr", "finetune.augment=natural"] if rgb else []), *args.overrides]
    return load_config(REPO / "params.yaml", sets)


@dataclass(frozen=True)
class Encoders:
    scratch: Path  # compact CNN, SimCLR from random weights, at SMALL px
    imagenet: Path  # Lite0 with ImageNet's weights, saved as an encoder file (no SSL)
    imagenet_ssl: Path  # the same after SimCLR on the data, at LARGE px


def pretrain_encoders(data: Data, cfg: PipelineConfig, args: argparse.Namespace, root: Path) -> Encoders:
    """The three starts, pretrained once per data set (reused from ``root`` when all are there)."""
    kept = Encoders(root / "scratch" / "encoder.pt", root / "imagenet" / "encoder.pt",
                    root / "imagenet_ssl" / "encoder.pt")
    if all(p.is_file() for p in (kept.scratch, kept.imagenet, kept.imagenet_ssl)):
        print(f"{data.name}: encoders reused from {root}", flush=True)
        return kept
    start = time.perf_counter()
    simclr = cfg.pretrain.model_copy(update={"epochs": args.ssl_epochs})
    scratch = pretrain_encoder(data.small.out_dir, simclr, root / "scratch").encoder_path
    lite0 = cfg.pretrain.model_copy(update={"encoder": IMAGENET_START[0], "init": IMAGENET_START[1],
                                            "epochs": args.lite0_epochs, "lr": args.lite0_lr,
                                            "batch_size": 128})
    encoder, _ = build_encoder(lite0, data.channels, lite0.init, LARGE)
    imagenet = root / "imagenet" / "encoder.pt"
    save_atomic({"spec": encoder.spec.to_dict(), "state_dict": encoder.state_dict()}, imagenet)
    adapted = pretrain_encoder(data.large.out_dir, lite0, root / "imagenet_ssl",
                               init_path=IMAGENET_START[1]).encoder_path
    print(f"{data.name}: encoders pretrained in {time.perf_counter() - start:.0f} s", flush=True)
    return Encoders(Path(scratch), imagenet, Path(adapted))


def _test_accuracy(pre: PreprocessRecord, classifier: Path) -> float:
    probs, y, _ = score(pre.out_dir, classifier, 256)
    return float((probs.argmax(1) == y).mean())


Row = dict[str, Any]


def _finetuned(pre: PreprocessRecord, encoder: Path, cfg: PipelineConfig, out: Path, mode: str,
               init: str | None = None) -> tuple[Path, float]:
    rec = finetune_classifier(pre.out_dir, encoder, pre.classes, cfg.finetune, out, mode=mode, init_path=init)
    return Path(rec.classifier_path), rec.best_val_accuracy


def _pooled(pre: PreprocessRecord, start: Path, cfg: PipelineConfig, out: Path,
            teacher: tuple[Path, Path] | None = None) -> tuple[Path, float]:
    pool = cfg.pool.model_copy(update={"method": "self_training"}) if teacher else cfg.pool
    rec = learn_from_pool(pre.out_dir, start, pool, out.parent / LABELS, out, cfg.finetune.augment,
                          teacher=teacher)
    return Path(rec.classifier_path), rec.best_val_accuracy


def network_routes(data: Data, enc: Encoders, cfg: PipelineConfig,
                   out: Path) -> dict[str, tuple[Path, float]]:
    """route -> (classifier, best validation accuracy), for ``NETWORK_ROUTES``."""
    found = {}
    starts = {"scratch": (data.small, enc.scratch, "full", None),
              "imagenet": (data.large, enc.imagenet, "full", None),
              "imagenet+ssl": (data.large, enc.imagenet_ssl, "full", None)}
    for route, (pre, encoder, mode, init) in starts.items():
        folder = out / route
        found[route] = _finetuned(pre, encoder, cfg, folder, mode, init)
        found[f"{route}+pool"] = _pooled(pre, found[route][0], cfg, folder / "pool.pt")
    return found


def one_cell(data: Data, enc: Encoders, cfg: PipelineConfig, budget: float, seed: int,
             out: Path) -> list[Row]:
    """Every route and reference for one (labels, seed)."""
    cfg = cfg.model_copy(update={"finetune": budget_config(cfg.finetune, budget, seed),
                                 "pool": cfg.pool.model_copy(update={"seed": seed})})
    rows: list[Row] = []

    def add(route: str, val: float, test: float, started: float) -> None:
        rows.append({"data": data.name, "labels": budget, "seed": seed, "route": route, "val_accuracy": val,
                     "test_accuracy": test, "seconds": round(time.perf_counter() - started, 1)})

    started = time.perf_counter()
    found = network_routes(data, enc, cfg, out)
    for route, (path, val) in found.items():
        pre = data.small if route.startswith("scratch") else data.large
        add(route, val, _test_accuracy(pre, path), started)
    teacher = max(found, key=lambda r: (found[r][1], r))  # chosen on validation
    teacher_pre = data.small if teacher.startswith("scratch") else data.large
    started = time.perf_counter()
    student, val = _pooled(data.small, found["scratch"][0], cfg, out / "scratch" / "distilled.pt",
                           (found[teacher][0], Path(teacher_pre.out_dir)))
    add("distilled", val, _test_accuracy(data.small, student), started)
    rows[-1]["teacher"] = teacher
    rows += _references(data, enc, cfg, out, add)
    rows += _auto(data, cfg, out, rows, add)
    return rows


def _references(data: Data, enc: Encoders, cfg: PipelineConfig, out: Path,
                add: Callable[[str, float, float, float], None]) -> list[Row]:
    started = time.perf_counter()
    runtime = resolve_runtime("cpu", "fp32", "evaluate")
    ref = reference_metrics(Path(data.large.out_dir), enc.imagenet, out / "imagenet" / LABELS, runtime)
    add("pixels", float("nan"), ref["pixels_test_accuracy"], started)
    add("imagenet-probe", float("nan"), ref["encoder_test_accuracy"], started)
    return []


def _auto(data: Data, cfg: PipelineConfig, out: Path, rows: list[Row],
          add: Callable[[str, float, float, float], None]) -> list[Row]:
    """What ``pretrain.start: auto`` chooses on these labels, and the result of its route."""
    started = time.perf_counter()
    record = choose_start(data.large.out_dir, cfg.pretrain, cfg.finetune, out / "start")
    route = "imagenet+ssl+pool" if record.choice == "imagenet" else "scratch+pool"
    taken = next(r for r in rows if r["route"] == route)
    add("auto", taken["val_accuracy"], taken["test_accuracy"], started)
    rows[-1]["teacher"] = f"{record.choice}: {record.reason}"
    return []


def served_speed(data: Data, enc: Encoders, threads: int = 2) -> list[Row]:
    """CPU images/s of each kind of served model at its input size (batch 64, ``threads``), its
    parameters and its file size."""
    torch.set_num_threads(threads)
    found = []
    for kind, pre, encoder in (("compact CNN, 32 px", data.small, enc.scratch),
                               ("EfficientNet-Lite0, 96 px", data.large, enc.imagenet)):
        path = Path(tempfile.mkdtemp()) / "classifier.pt"
        finetune_classifier(pre.out_dir, encoder, pre.classes, load_config(
            REPO / "params.yaml", ["finetune.min_steps=1", "finetune.epochs=1", "finetune.device=cpu",
                                   "finetune.baseline=false"]).finetune, path.parent, mode="full")
        model, _ = load_classifier(path)
        shape = (512, data.channels, pre.image_size, pre.image_size)
        images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        predict_logits(model, images[:64], torch.device("cpu"), 64)  # warm up
        start = time.perf_counter()
        predict_logits(model, images, torch.device("cpu"), 64)
        seconds = time.perf_counter() - start
        found.append({"data": data.name, "model": kind, "images_per_second": round(512 / seconds),
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "megabytes": round(path.stat().st_size / 1e6, 2)})
    return found


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each (data, labels, route)."""
    by = rows.groupby(["data", "labels", "route"], sort=False)["test_accuracy"]
    table = by.agg(["mean", "std", "count"])
    return table.reset_index()


def chart(table: pd.DataFrame, path: Path) -> Path:
    """One panel per data set: each route's mean test accuracy (bars) with its std, per budget."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(table["data"]))
    fig = Figure(figsize=(5 * len(names), 4.5), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        part = table[table["data"] == name]
        routes = list(dict.fromkeys(part["route"]))
        for k, (budget, rows) in enumerate(part.groupby("labels", sort=False)):
            by = rows.set_index("route").reindex(routes)
            label = f"{int(budget)} per class" if budget > 1 else f"{budget:.0%} of labels"
            ax.bar(np.arange(len(routes)) + 0.4 * k, by["mean"], 0.4, yerr=by["std"].fillna(0), label=label)
        ax.set_xticks(np.arange(len(routes)) + 0.2, routes, rotation=60, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def report(table: pd.DataFrame, speed: pd.DataFrame) -> None:
    for (name, budget), rows in table.groupby(["data", "labels"], sort=False):
        print(f"\n{name}, labels {budget}: test accuracy, mean +- std over {int(rows['count'].max())} seeds")
        for r in rows.itertuples():
            print(f"  {r.route:<20} {r.mean:.4f} +- {0 if np.isnan(r.std) else r.std:.4f}")
    print("\nserved models on this CPU (batch 64, 2 threads):")
    print(speed.to_string(index=False))


def choices(args: argparse.Namespace) -> None:
    """``pretrain.start: auto``'s choice for each (data, labels, seed), without training: the
    cheap half of the ``auto`` route, for data sets where the whole bench is too long."""
    work, rows = args.work or Path(tempfile.mkdtemp(prefix="transfer-")), []
    for name in args.data.split(","):
        data = prepare(name, work, args.per_class)
        cfg = settings(data, args)
        for budget in (float(b) for b in args.budgets.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                finetune = budget_config(cfg.finetune, budget, seed)
                out = work / name / f"start-{budget}-{seed}"
                record = choose_start(data.large.out_dir, cfg.pretrain, finetune, out)
                rows.append({"data": name, "labels": budget, "seed": seed, "choice": record.choice,
                             **(record.probe or {})})
                print(f"{name} labels {budget} seed {seed}: {record.reason}", flush=True)
    pd.DataFrame(rows).to_csv(args.out / f"{args.name}_choice.csv", index=False)
    print(f"wrote {args.out / args.name}_choice.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="icons-distinct,icons-context,fashion,mnist-5k")
    parser.add_argument("--budgets", default="0.1,10", help="labels: a fraction, or per class when > 1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-class", type=int, default=450, help="images per class kept (icons-distinct, "
                                                                   "Fashion-MNIST; mnist-5k has 500)")
    parser.add_argument("--ssl-epochs", type=int, default=40, help="SimCLR epochs of the compact CNN")
    parser.add_argument("--lite0-epochs", type=int, default=5,
                        help="SimCLR epochs continuing ImageNet's Lite0")
    parser.add_argument("--lite0-lr", type=float, default=5e-4, help="its learning rate (at batch 256)")
    parser.add_argument("--pool-steps", type=int, default=120, help="pool-stage steps of every route")
    parser.add_argument("--unlabeled-batch", type=int, default=64)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="transfer")
    parser.add_argument("--work", type=Path, default=None, help="keep the caches and models here")
    parser.add_argument("--append", action="store_true",
                        help="keep the other data sets' rows of an earlier run of --name (a data set with "
                             "budgets of its own: one run per data set, one table)")
    parser.add_argument("--choice-only", action="store_true",
                        help="only what pretrain.start: auto chooses per (data, labels, seed), with the "
                             "probe's numbers, into <name>_choice.csv (where it chooses scratch, its route "
                             "is today's)")
    parser.add_argument("--report-only", action="store_true",
                        help="no training: the table and plot of <name>_runs.csv as it is (a run stopped "
                             "early), and the served speed of the encoders in --work")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.choice_only:
        choices(args)
        return
    begun, rows, speed = time.perf_counter(), [], []
    if args.append and (args.out / f"{args.name}_runs.csv").is_file():
        rerun = args.data.split(",")
        for kept, part in ((rows, "runs"), (speed, "speed")):
            earlier = pd.read_csv(args.out / f"{args.name}_{part}.csv")
            kept += earlier[~earlier["data"].isin(rerun)].to_dict("records")
    work = args.work or Path(tempfile.mkdtemp(prefix="transfer-"))
    budgets = [float(b) for b in args.budgets.split(",")]
    if args.report_only:
        rows = pd.read_csv(args.out / f"{args.name}_runs.csv").to_dict("records")
    for name in args.data.split(","):
        data = prepare(name, work, args.per_class)
        cfg = settings(data, args)
        enc = pretrain_encoders(data, cfg, args, work / name)
        speed += served_speed(data, enc)
        for budget in [] if args.report_only else budgets:
            for seed in (int(s) for s in args.seeds.split(",")):
                found = one_cell(data, enc, cfg, budget, seed, work / name / f"{budget}-{seed}")
                rows += found
                pd.DataFrame(rows).to_csv(args.out / f"{args.name}_runs.csv", index=False)
                print(f"{name} labels {budget} seed {seed}: "
                      + ", ".join(f"{r['route']} {r['test_accuracy']:.3f}" for r in found), flush=True)
    table = summarize(pd.DataFrame(rows))
    table.to_csv(args.out / f"{args.name}.csv", index=False)
    pd.DataFrame(speed).to_csv(args.out / f"{args.name}_speed.csv", index=False)
    chart(table, args.out / f"{args.name}.png")
    report(table, pd.DataFrame(speed))
    print(f"\n{(time.perf_counter() - begun) / 60:.1f} min; wrote {args.out / args.name}*.csv and .png")


if __name__ == "__main__":
    main()
