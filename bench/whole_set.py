"""Whole-set generation: the complete CIFAR-10-C layout (15 corruptions x 5 severities) from a 10,000-image set,
time per corruption and in total with the worker count; then the ImageNet parameters at 224x224 on a few images, and
what an ImageNet-C generation (50,000 images x 15 x 5) costs per core at those rates.

    python bench/whole_set.py [--data-dir /usr/share/datasets/fashion-mnist] [--n 10000] [--workers 2]
                              [--n224 8] [--out /tmp/whole]

The source images: Fashion-MNIST's test set (real photographs of garments, padded to 32x32 RGB) from --data-dir,
else the built-in 2,000-image subset repeated to --n.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.corrupt import write_c_layout  # noqa: E402
from robustlab.corruptions import BENCHMARK, corrupt  # noqa: E402
from robustlab.corruptions.pool import CorruptionPool  # noqa: E402
from robustlab.data import ArrayImageSet, load_dataset  # noqa: E402
from robustlab.progress import progress_bars  # noqa: E402


def source(data_dir: str | None, n: int) -> ArrayImageSet:
    data = load_dataset("fashion-mnist", data_dir)
    idx = np.arange(n) % len(data)
    return ArrayImageSet(data.images[idx], data.labels[idx], name="fashion-mnist", split="test", num_classes=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n224", type=int, default=8)
    ap.add_argument("--out", help="where to write the layout (default a temporary folder, removed after)")
    args = ap.parse_args()
    base = source(args.data_dir, args.n)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp())
    print(f"CIFAR-10-C layout from {args.n} Fashion-MNIST images (32x32), {args.workers} worker processes, "
          f"torch {torch.get_num_threads()} threads")
    total, cpu = 0.0, torch.device("cpu")
    with CorruptionPool(args.workers) as pool:  # one pool for the layout, as `robustlab corrupt` keeps it
        for name in BENCHMARK:
            start = time.perf_counter()
            write_c_layout(base, out, [name], parameters="cifar", seed=0, n=None, batch_size=500, device=cpu,
                           progress=progress_bars(True), pool=pool)
            seconds = time.perf_counter() - start
            total += seconds
            print(f"  {name:18s} {seconds:7.1f} s   {5 * args.n / seconds:8.0f} images/s")
    print(f"whole CIFAR-10-C: {total / 60:.1f} min ({5 * 15 * args.n / total:.0f} images/s)")
    if not args.out:
        shutil.rmtree(out)
    big = np.stack([np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(im).resize((224, 224)))
                    for im in base.images[:args.n224]])
    print(f"ImageNet parameters at 224x224, {args.n224} images, one process (severity 3, JPEG re-encode included):")
    per_core = 0.0
    for name in BENCHMARK:
        corrupt(big[:1], name, 3, parameters="imagenet", seed=0)  # warm-up: numba loads its compiled code on first use
        start = time.perf_counter()
        corrupt(big, name, 3, parameters="imagenet", seed=0)
        rate = args.n224 / (time.perf_counter() - start)
        per_core += 50000 * 5 / rate
        print(f"  {name:18s} {rate:8.1f} images/s")
    print(f"ImageNet-C (50,000 x 15 x 5) at these rates: {per_core / 3600:.1f} core-hours")


if __name__ == "__main__":
    main()
