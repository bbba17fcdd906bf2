"""Pretrain, fine-tune and evaluate end to end on one device, from a cache of learnable images
made here (nothing is downloaded): the GPU check's last step (``bench/gpu_check.sh``).

    python bench/gpu_end_to_end.py                          # CUDA, 8,000 images of 32 px
    python bench/gpu_end_to_end.py --device cpu --images 800 # the same path on a CPU, small

Each class is a texture over a random colour with noise (``textures``), so a working pipeline
learns it and a broken one (wrong device, lost normalisation, NaN under bf16) does not: the
script exits non-zero when the fine-tuned model's test accuracy is under ``--min-accuracy``.
Prints each stage's seconds and the device it ran on. Imports only torch, numpy and
``pipeline_tasks``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.config import EvaluateConfig, FinetuneConfig, PretrainConfig  # noqa: E402
from pipeline_tasks.data.cache import save_split  # noqa: E402
from pipeline_tasks.evaluation.evaluate import evaluate_classifier  # noqa: E402
from pipeline_tasks.finetune.train import finetune_classifier  # noqa: E402
from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: E402

CLASSES = ("horizontal", "vertical", "checkerboard", "plain")  # textures that flips and crops keep


def textures(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 [n, 3, size, size], int64 [n])``: horizontal stripes, vertical stripes, a
    checkerboard or none, of random frequency and phase, over a random colour, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    freq, phase = rng.uniform(0.6, 1.0, (n, 1, 1)), rng.uniform(0, 6.3, (n, 2, 1, 1))
    across, down = np.sin(xx * freq + phase[:, 0]), np.sin(yy * freq + phase[:, 1])
    grey = np.select([labels[:, None, None] == k for k in range(3)], [down, across, across * down], 0) * 60
    pixels = rng.uniform(60, 190, (n, 3, 1, 1)) + grey[:, None] + rng.normal(0, 8, (n, 3, size, size))
    return np.clip(pixels, 0, 255).astype(np.uint8), labels.astype(np.int64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=8000, help="training images (val and test: 1/8 each)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--min-accuracy", type=float, default=0.9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre", Path(tmp) / "out"
        pre.mkdir()
        for seed, (split, n) in enumerate((("train", args.images), ("val", args.images // 8),
                                           ("test", args.images // 8))):
            save_split(pre, split, *textures(n, args.size, seed))
        (pre / "classes.json").write_text(json.dumps(list(CLASSES)))
        start = time.perf_counter()
        encoder = pretrain_encoder(pre, PretrainConfig(
            encoder=args.encoder, epochs=args.epochs, batch_size=512, augment="simclr", device=args.device,
            knn_every_epochs=0), out / "pretrain")
        pretrained = time.perf_counter()
        tune = FinetuneConfig(labels_per_class=50, val_per_class=25, device=args.device, augment="natural")
        model = finetune_classifier(pre, encoder.encoder_path, CLASSES, tune, out / "finetune")
        tuned = time.perf_counter()
        result = evaluate_classifier(pre, model.classifier_path, EvaluateConfig(device=args.device),
                                     out / "metrics.json", out / "plots")
        done = time.perf_counter()
    print(f"pretrain  {pretrained - start:7.1f} s  {encoder.views_per_second:,.0f} views/s  "
          f"{encoder.runtime}")
    print(f"finetune  {tuned - pretrained:7.1f} s  val accuracy {model.best_val_accuracy:.3f}  "
          f"{model.runtime}")
    print(f"evaluate  {done - tuned:7.1f} s  test accuracy {result.test_accuracy:.3f}")
    if not result.test_accuracy >= args.min_accuracy:
        print(f"FAILED: test accuracy {result.test_accuracy:.3f} is under {args.min_accuracy}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
