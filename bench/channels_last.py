"""The encoder's memory layout, side by side in one run: training steps per second of the same
encoder with NCHW (PyTorch's default) and channels-last (NHWC, what ``Encoder`` uses)
weights and activations, in fp32 and, where the CPU has native bf16 (AMX), bf16 autocast.

    python bench/channels_last.py                       # compact encoder, 28 px, 1 and 2 threads
    python bench/channels_last.py --encoder resnet18 --size 32 --channels 3

One step: forward, a scalar loss, backward and an AdamW update, on a fixed random batch
(``--batch``); two warm-up steps, then the mean of ``--steps``. Imports only torch and
``pipeline_tasks``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.models.encoders import Encoder, EncoderSpec, resolve_small_stem  # noqa: E402


def images_per_second(enc: Encoder, x: torch.Tensor, channels_last: bool, dtype: torch.dtype | None,
                      steps: int) -> float:
    """Training images/s of ``enc`` on ``x`` in the layout asked."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    enc = enc.to(memory_format=fmt)
    forward = enc if channels_last else enc.body  # Encoder.forward makes its input channels-last
    opt = torch.optim.AdamW(enc.parameters(), 1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = forward(x).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="compact",
                        choices=["compact", "resnet18", "resnet34", "resnet50"])
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    torch.manual_seed(0)
    small = resolve_small_stem("auto", args.size, args.encoder)
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    dtypes: list[torch.dtype | None] = [None]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes.append(torch.bfloat16)
    print(f"{args.encoder} (width {args.base_width}), {args.channels}x{args.size}x{args.size}, "
          f"batch {args.batch}: training images/s")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in dtypes:
            spec = EncoderSpec(args.channels, args.base_width, arch=args.encoder, small_stem=small)
            enc = Encoder(spec)
            nchw = images_per_second(enc, x, False, dtype, args.steps)
            nhwc = images_per_second(enc, x, True, dtype, args.steps)
            name = "bf16" if dtype else "fp32"
            print(f"  {threads} thread(s) {name}: NCHW {nchw:7.0f}  channels-last {nhwc:7.0f}  "
                  f"ratio {nhwc / nchw:.2f}x")


if __name__ == "__main__":
    main()
