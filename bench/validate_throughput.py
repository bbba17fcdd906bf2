"""Manifest throughput: a cold pass (every file decoded and hashed) against a warm pass (rows
reused from the cache for files whose size and mtime are unchanged), side by side in one run.

    python bench/validate_throughput.py                 # Fashion-MNIST from Debian's package
    python bench/validate_throughput.py --data DIR      # any <class>/<image> folder

Goal: the warm pass over Fashion-MNIST's 70,000 images is at least 20x faster.
The cold pass reads files the OS may already cache (they were just written), so the ratio
understates what a user sees after a reboot.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline_tasks.data.idx import find_idx_pairs, import_idx
from pipeline_tasks.data.manifest import build_manifest

FASHION = Path("/usr/share/datasets/fashion-mnist")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="image folder (default: import Fashion-MNIST)")
    parser.add_argument("--workers", type=int, default=None, help="manifest threads (default: 2x cores)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            if not FASHION.is_dir():
                raise SystemExit(
                    f"{FASHION} not found: `apt-get install dataset-fashion-mnist`, or pass --data DIR")
            data = Path(tmp) / "fashion"
            start = time.perf_counter()
            n = import_idx(find_idx_pairs(FASHION), data).total
            print(f"import-idx: {n} images in {time.perf_counter() - start:.1f} s")
        cache = Path(tmp) / "manifest-cache.csv"
        timings = {}
        for name in ("cold", "warm"):
            start = time.perf_counter()
            manifest = build_manifest(data, cache, workers=args.workers)
            timings[name] = time.perf_counter() - start
            print(f"{name}: {len(manifest)} images in {timings[name]:.2f} s "
                  f"= {len(manifest) / timings[name]:,.0f} images/s")
        print(f"warm / cold speed-up: {timings['cold'] / timings['warm']:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
