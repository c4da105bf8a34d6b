"""glass_blur throughput: the engine's batched glass blur with its compiled pixel loop (robustlab.corruptions.
uint8_batch) against the per-image Python loop the engine ran before (tests/reference.py), side by side on the same
images, CIFAR parameters at 32x32 and ImageNet parameters at 224x224, one core.

    python bench/glass_blur.py [--n32 200] [--n224 3] [--severities 1 2 3 4 5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.corruptions import parameter, uint8_batch  # noqa: E402
from tests.reference import python_glass_blur  # noqa: E402


def photos(n: int, size: int) -> np.ndarray:
    from PIL import Image
    from sklearn.datasets import load_sample_image
    out = []
    for i in range(n):
        src = load_sample_image(("china.jpg", "flower.jpg")[i % 2])
        crop = Image.fromarray(src[60 + 7 * i:284 + 7 * i, 150:374])
        out.append(np.asarray(crop if size == 224 else crop.resize((size, size), Image.BOX)) / 255.0)
    return np.stack(out)


def rate_ours(xs: np.ndarray, c, batch: int) -> float:
    u8 = (xs * 255).astype(np.uint8)
    start = time.perf_counter()
    for i in range(0, len(u8), batch):
        uint8_batch.glass_blur(u8[i:i + batch], c, [np.random.default_rng(k) for k in range(i, i + batch)])
    return len(u8) / (time.perf_counter() - start)


def rate_loop(xs: np.ndarray, c) -> float:
    start = time.perf_counter()
    for i, x in enumerate(xs):
        python_glass_blur(x, c, np.random.default_rng(i))
    return len(xs) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n32", type=int, default=200)
    ap.add_argument("--n224", type=int, default=3)
    ap.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rate_ours(photos(2, 32), parameter("glass_blur", 1, "cifar"), 2)  # compile once
    print(f"glass_blur, images/s on one core (median of {args.repeats})")
    speedups = []
    for severity in args.severities:
        for size, parameters, n in ((32, "cifar", args.n32), (224, "imagenet", args.n224)):
            xs, c = photos(n, size), parameter("glass_blur", severity, parameters)
            ours, loop = [], []
            for _ in range(args.repeats):
                ours.append(rate_ours(np.repeat(xs, 10 if size == 224 else 5, axis=0), c, 256 if size == 32 else 32))
                loop.append(rate_loop(xs, c))
            o, p = statistics.median(ours), statistics.median(loop)
            speedups.append(o / p)
            print(f"severity {severity} {size}x{size} ({parameters} parameters {c}): compiled {o:9.1f}   "
                  f"python loop {p:7.2f}   speed-up {o / p:6.1f}x")
    print(f"smallest speed-up: {min(speedups):.1f}x")

if __name__ == "__main__":
    main()
