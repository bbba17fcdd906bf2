"""Pretraining throughput of the real loop (``pipeline_tasks.pretrain``), side by side in one
run: views/s, step time, the share of step time spent waiting for data and, on CUDA, model
FLOP utilisation, for each variant asked (with and without ``torch.compile``; the cache held
on the device or streamed from the memory map), and their ratios.

    python bench/pretrain_throughput.py                   # CPU: a small set, compact ResNet
    python bench/pretrain_throughput.py --images 50000 --encoder resnet18 --batch 512 --epochs 3

FLOPs are counted with ``torch.utils.flop_counter`` on one forward pass of a view, times 3
(forward + backward), times 2 views an image, against ``--peak-tflops`` (989, an H200's dense
bf16). The first epoch warms up (compilation, allocator, cuDNN autotuning) and is not counted.
Imports only torch, numpy and ``pipeline_tasks``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.config import PretrainConfig  # noqa: E402
from pipeline_tasks.data.cache import save_split  # noqa: E402
from pipeline_tasks.models.encoders import Encoder, EncoderSpec, resolve_small_stem  # noqa: E402
from pipeline_tasks.ssl.trainer import pretrain_encoder  # noqa: E402


def flops_per_view(cfg: PretrainConfig, channels: int, size: int) -> float:
    """Training FLOPs of one view through the encoder: 3x its forward pass."""
    small_stem = resolve_small_stem(cfg.small_stem, size, cfg.encoder)
    enc = Encoder(EncoderSpec(channels, cfg.base_width, arch=cfg.encoder, small_stem=small_stem))
    with FlopCounterMode(display=False) as counter:
        enc(torch.zeros(1, channels, size, size))
    return 3.0 * counter.get_total_flops()


def measure(data: Path, cfg: PretrainConfig, stream: bool) -> dict[str, float]:
    """The last epoch's views/s and data-wait share of a real pretraining run."""
    seen: dict[int, dict[str, float]] = {}
    os.environ["PRETRAINFLOW_DEVICE_CACHE_BYTES"] = "0" if stream else str(1 << 40)
    with tempfile.TemporaryDirectory() as out:
        pretrain_encoder(data, cfg, out, lambda m, step: seen.setdefault(step, {}).update(m))
    last = seen[cfg.epochs - 1]
    return {"views_per_second": last["views_per_second"], "data_wait_share": last["data_wait_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--encoder", default="compact",
                        choices=["compact", "resnet18", "resnet34", "resnet50"])
    parser.add_argument("--method", default="simclr", choices=["simclr", "byol", "vicreg"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2, help="the first one warms up")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--variants", default="eager,compiled,streamed",
                        help="eager: cache on the device; compiled: + torch.compile (CUDA); "
                             "streamed: batches gathered from the memory map each step")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 3, args.size, args.size), dtype=np.uint8)
    cfg = PretrainConfig(method=args.method, encoder=args.encoder, epochs=args.epochs, batch_size=args.batch,
                         augment="simclr", precision=args.precision, knn_every_epochs=0, collapse_threshold=0,
                         base_width=16)
    flops = flops_per_view(cfg, 3, args.size)
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{args.images} RGB images {args.size}px, {args.encoder} ({flops / 1e9:.2f} GFLOP per view "
          f"trained), {args.method}, batch {args.batch}, 2 views, precision {args.precision}, {device}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_split(tmp, "train", images, np.zeros(len(images), dtype=np.int64))
        for variant in args.variants.split(","):
            if variant == "compiled" and not cuda:
                print("  compiled: skipped (torch.compile is used on CUDA only)")
                continue
            run_cfg = cfg.model_copy(update={"compile": variant == "compiled"})
            results[variant] = measure(Path(tmp), run_cfg, stream=variant == "streamed")
    base = results[next(iter(results))]["views_per_second"]
    for variant, r in results.items():
        views = r["views_per_second"]
        step_ms = 2 * args.batch / views * 1000
        epoch_s = 2 * args.images / views
        mfu = f", MFU {views * flops / (args.peak_tflops * 1e12):.1%}" if cuda else ""
        print(f"  {variant:<9} {views:>11,.0f} views/s  step {step_ms:7.1f} ms  epoch {epoch_s:6.1f} s  "
              f"data wait {r['data_wait_share']:5.1%}{mfu}  ({views / base:.2f}x {next(iter(results))})")


if __name__ == "__main__":
    main()
