"""Cost of Algorithm 1 at test time: adaptive-lambda evaluation relative to a fixed-lambda one, and its speed-up
over the naive alternative of running the whole network at every grid lambda.

    python bench/adaptive.py [--device cpu|cuda] [--n 512] [--batch-size 128] [--repeats 3] [--width 1.0]
                             [--select-n M] [--no-naive] [--ckpt CKPT --calibration FILE --dataset NAME]

SDNet-18 (CIFAR input, random weights), a 14-point grid and a rising line crossed mid-grid on random images: a
hard case for the per-image search (with its certification about 5.6 residuals per image). With --ckpt and
--calibration, a trained model, its calibration file and its dataset's first --n test images instead (for
instance zoo:sdnet18-fashion, reports/fashion/calibration-impulse.json, --dataset fashion-mnist: the built-in
subset). All variants run on the same images in one process, alternating; seconds are the median of the
repeats, 'vs fixed' the median of each round's ratio to that round's fixed-lambda time. --select-n
adds per-set selection on a seeded sample of M images (eval --select-n: default 1000, so on a 10,000-image set
use --n 2000 --select-n 200 for the same share); --no-naive leaves out the whole network per grid lambda (14x the
cost).
The C allocator is set up as the command line sets it (robustlab/allocator.py); ROBUSTLAB_MALLOC=system measures
glibc's defaults.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustlab.adaptive import (  # noqa: E402
    OFFICIAL_GRID,
    AdaptiveLambda,
    Calibration,
    Fit,
    load_calibration,
    residual_grid,
    sample_mask,
    select_for_set,
    select_per_image,
)
from robustlab.allocator import keep_freed_memory  # noqa: E402
from robustlab.checkpoints import load_model  # noqa: E402
from robustlab.counting import checked_batches, count_correct  # noqa: E402
from robustlab.data import ArrayImageSet, load_dataset, to_pixels  # noqa: E402
from robustlab.device import resolve_device  # noqa: E402
from robustlab.models import ModelConfig, RobustModel, build_net, csc_layer  # noqa: E402
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


Setup = tuple[RobustModel, ArrayImageSet, Calibration, str]


def trained(args: argparse.Namespace, device: torch.device) -> Setup:
    """--ckpt's model, its calibration and its dataset's first --n test images."""
    test = load_dataset(args.dataset, args.data_dir)
    data = ArrayImageSet(test.images[:args.n], test.labels[:args.n], name=test.name, split=test.split,
                         num_classes=test.num_classes)
    return (load_model(args.ckpt, device=device), data, load_calibration(args.calibration),
            f"{args.ckpt}, calibration {args.calibration}, {args.dataset}")


def random_line(args: argparse.Namespace, device: torch.device) -> Setup:
    """A random SDNet-18 on random images, and a rising line (as calibrations of the paper's kind are) that these
    images cross mid-grid: b = the training lambda, a from the first batch's median residual mid-grid."""
    cfg = ModelConfig(arch="sdnet18", num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD,
                      arch_kwargs={"width": args.width})
    torch.manual_seed(0)
    model = RobustModel(build_net(cfg), cfg).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
    labels = torch.randint(0, 10, (args.n,), generator=gen).numpy()
    data = ArrayImageSet(images, labels, name="cifar10", split="test", num_classes=10)
    grid, middle = list(OFFICIAL_GRID), len(OFFICIAL_GRID) // 2
    first = to_pixels(next(iter(checked_batches(data, args.batch_size, None)))[0], device)
    a = (grid[middle] - 0.1) / float(residual_grid(model, first, grid[middle:middle + 1])[0].median())
    calib = Calibration(checkpoint_sha256="", arch="sdnet18", layer=0, noise="gaussian", grid=grid, levels=[],
                        sweep=[{}], points=[{}], fit=Fit(a, 0.1, 1.0), calibration_split="", n=0, seed=0)
    return model, data, calib, f"SDNet-18 width {args.width}, random weights and images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--select-n", type=int, default=0, metavar="M")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--ckpt", help="a trained model instead of the random SDNet-18 (with --calibration)")
    ap.add_argument("--calibration", help="its calibration file (robustlab calibrate)")
    ap.add_argument("--dataset", default="fashion-mnist", help="--ckpt's test images (built in or --data-dir)")
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    if (args.ckpt is None) != (args.calibration is None):
        ap.error("--ckpt and --calibration go together")
    malloc = keep_freed_memory()
    device = resolve_device(args.device)
    model, data, calib, what = trained(args, device) if args.ckpt else random_line(args, device)
    grid = list(calib.grid)
    csc = csc_layer(model)
    train_lambda = csc.lmbda
    batches = lambda: checked_batches(data, args.batch_size, None)  # noqa: E731
    first = to_pixels(next(iter(batches()))[0], device)

    def fixed() -> None:
        csc.lmbda = train_lambda
        count_correct(model, batches(), device, top5=True)

    def adaptive_set(select_n: int | None = None) -> None:
        def firsts() -> Iterator[tuple[int, torch.Tensor]]:
            return ((i * args.batch_size, images) for i, (images, _) in enumerate(batches()))
        with torch.inference_mode():
            csc.lmbda = select_for_set(model, firsts, calib, device, total=len(data),
                                       mask=sample_mask(len(data), select_n, 0)).lmbda
        count_correct(model, batches(), device, top5=True)
        csc.lmbda = train_lambda

    def adaptive_image() -> None:
        count_correct(AdaptiveLambda(model, calib, per_image=True), batches(), device, top5=True)

    def every_lambda() -> None:  # the naive way: the whole network once per grid lambda
        for lam in grid:
            csc.lmbda = lam
            count_correct(model, batches(), device, top5=True)
        csc.lmbda = train_lambda

    variants = {"fixed lambda": fixed, "adaptive, per set": adaptive_set, "adaptive, per image": adaptive_image}
    if args.select_n:
        variants[f"adaptive, per set, sample {args.select_n}"] = lambda: adaptive_set(args.select_n)
    if not args.no_naive:
        variants["whole network x 14 lambdas"] = every_lambda
    fixed()  # warm-up (and the CSC step size)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {where}; malloc: {malloc}; {what}; {len(data)} images, batch "
          f"{args.batch_size}; grid of {len(grid)}; median of {args.repeats}")
    # each round's time over the same round's fixed-lambda time: a slow spell of the machine cancels out
    ratio = {k: statistics.median(t / f for t, f in zip(v, times["fixed lambda"])) for k, v in times.items()}
    print(f"{'variant':34s} {'seconds':>8s} {'img/s':>8s} {'vs fixed':>9s}  (median of the rounds' ratios)")
    for name, t in med.items():
        print(f"{name:34s} {t:8.3f} {len(data) / t:8.1f} {ratio[name]:9.3f}")
    with torch.inference_mode():
        evaluations = select_per_image(model, first, calib).evaluations / len(first)
    print(f"per image: {evaluations:.2f} residual evaluations per image (first batch) of the grid's {len(grid)}")
    if "whole network x 14 lambdas" in med:
        for name in (k for k in med if k.startswith("adaptive")):
            print(f"{name}: {med['whole network x 14 lambdas'] / med[name]:.2f}x faster than the whole network per "
                  "lambda")


if __name__ == "__main__":
    main()
