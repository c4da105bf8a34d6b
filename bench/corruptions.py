"""Corruption throughput: robustlab's engine (batched) vs imagecorruptions 1.1.2 (one image at a time).

    python bench/corruptions.py [--device cpu|cuda|auto] [--sizes 32,224] [--n 256,16] [--batch-size 256,32]
                                [--repeats 3] [--severity 3] [--parameters imagenet] [--corruptions a,b,...]
                                [--threads N]

Images: scikit-learn's digits (32x32, real data) and 224x224 crops of scikit-learn's two sample photographs,
box-resized for other sizes. Ours is `robustlab.corruptions.corrupt` on batches of --batch-size on --device; theirs
is `imagecorruptions.corrupt` per image (numpy's global generator seeded first). Both use the ImageNet-C parameters
by default (--parameters imagenet), the only ones imagecorruptions has. The two are timed alternately, --repeats times,
over the same --n images, and the median is reported, so that the ratio compares figures taken side by side under
the same machine load. Functions that fail in the imagecorruptions release (glass_blur and gaussian_blur: scikit-image
removed `multichannel`; fog: `np.float_` is gone in NumPy 2) are reported as "broken".
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.compat import patch_third_party  # noqa: E402
from robustlab.corruptions import CORRUPTIONS, corrupt  # noqa: E402
from robustlab.device import resolve_device  # noqa: E402


def images(n: int, size: int) -> np.ndarray:
    """n uint8 RGB images of size x size from real data."""
    if size == 32:
        from robustlab.data import load_dataset
        digits = load_dataset("digits").images
        return np.ascontiguousarray(digits[np.arange(n) % len(digits)])
    from sklearn.datasets import load_sample_image
    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    out = []
    for i in range(n):
        top, left = 20 + (37 * (i // 2)) % 180, 40 + (53 * (i // 2)) % 380
        crop = Image.fromarray(photos[i % 2][top:top + 224, left:left + 224])
        out.append(np.asarray(crop if size == 224 else crop.resize((size, size), Image.BOX)))
    return np.stack(out)


def imagecorruptions_corrupt():
    patch_third_party()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import imagecorruptions
        import imagecorruptions.corruptions as icc
    # robustlab.compat's pkg_resources shim resolves packages only; frost asks for its module's resource files
    icc.resource_filename = lambda _module, path: os.path.join(os.path.dirname(icc.__file__), path)
    return imagecorruptions.corrupt


def per_list(text: str, sizes: list[int], what: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if len(values) == 1:
        values *= len(sizes)
    if len(values) != len(sizes):
        raise SystemExit(f"--{what} takes one value or one per size ({len(sizes)})")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default="32,224")
    ap.add_argument("--n", default="256,16", help="images per measurement: one value, or one per size")
    ap.add_argument("--batch-size", default="256,32", help="our batch size: one value, or one per size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--parameters", default="imagenet", choices=["imagenet", "cifar"],
                    help="our parameter set (imagecorruptions always uses ImageNet-C's)")
    ap.add_argument("--corruptions", default="", help="comma list (default: all 19)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    ns, batch_sizes = per_list(args.n, sizes, "n"), per_list(args.batch_size, sizes, "batch-size")
    names = args.corruptions.split(",") if args.corruptions else list(CORRUPTIONS)
    for name in names:
        CORRUPTIONS.get(name)
    theirs_fn = imagecorruptions_corrupt()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# ours: robustlab.corruptions.corrupt on {where}, parameters {args.parameters}; theirs: "
          f"imagecorruptions 1.1.2, one image at a time on the CPU; severity {args.severity}, "
          f"median of {args.repeats}", flush=True)
    print(f"{'size':>5} {'corruption':<18} {'n':>5} {'batch':>5} {'ours img/s':>11} {'imagecorr img/s':>16} "
          f"{'speed-up':>9}", flush=True)

    for size, n, bs in zip(sizes, ns, batch_sizes):
        x = images(n, size)

        def ours(name: str) -> float:
            sync()
            t0 = time.perf_counter()
            for i in range(0, n, bs):
                corrupt(x[i:i + bs], name, args.severity, parameters=args.parameters, seed=0, start=i, device=device,
                        reencode=False)
            sync()
            return time.perf_counter() - t0

        def theirs(name: str) -> float:
            np.random.seed(0)
            t0 = time.perf_counter()
            for im in x:
                theirs_fn(im, corruption_name=name, severity=args.severity)
            return time.perf_counter() - t0

        for name in names:
            # warm-up: imports, caches, kernels
            corrupt(x[:2], name, args.severity, parameters=args.parameters, device=device)
            broken = None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    theirs_fn(x[0], corruption_name=name, severity=args.severity)
            except Exception as exc:  # noqa: BLE001  (the release's failures are what we report)
                broken = f"{type(exc).__name__}: {exc}"
            t_ours, t_theirs = [], []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(args.repeats):
                    t_ours.append(ours(name))
                    if broken is None:
                        t_theirs.append(theirs(name))
            ips_ours = n / statistics.median(t_ours)
            if broken is None:
                ips_theirs = n / statistics.median(t_theirs)
                col, ratio = f"{ips_theirs:16.1f}", f"{ips_ours / ips_theirs:8.1f}x"
            else:
                col, ratio = f"{'broken':>16}", f"{'-':>9}"
            print(f"{size:>5} {name:<18} {n:>5} {bs:>5} {ips_ours:11.1f} {col} {ratio}", flush=True)


if __name__ == "__main__":
    main()
