"""What per-image outcomes cost on a full CIFAR-10-C run: their size, and their time against evaluating a cell.

    python bench/outcomes.py [--device cpu|cuda] [--n 10000] [--cells 76] [--variants 3] [--repeats 3]

A full CIFAR-10-C run is 76 cells (clean and 15 corruptions x 5 severities) of 10,000 images per model variant.
Outcomes are made as a cell's counting makes them (a piece per batch of 128, joined in image order) with a model's
typical pattern (each cell's accuracy between 30% and 95%, a wrong prediction a random class) and written as the
store writes them (atomic, synced, one file per cell). The time per cell is set against the time the same process
takes to evaluate 1,024 CIFAR images with a full-width ResNet-18 (random weights), scaled to n images: outcomes
are only worth keeping if that ratio is small. Medians of --repeats.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.allocator import keep_freed_memory  # noqa: E402
from robustlab.device import resolve_device  # noqa: E402
from robustlab.models import ModelConfig, RobustModel, build_net  # noqa: E402
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from robustlab.outcomes import Outcomes, write_outcomes  # noqa: E402

BATCH = 128


def cell_pieces(rng: np.random.Generator, n: int) -> list[Outcomes]:
    """One cell's outcomes as its batches produce them."""
    labels = rng.integers(0, 10, n)
    right = rng.random(n) < rng.uniform(0.3, 0.95)
    pred = np.where(right, labels, rng.integers(0, 10, n))
    return [Outcomes(index=np.arange(i, min(i + BATCH, n)), ok=pred[i:i + BATCH] == labels[i:i + BATCH],
                     pred=pred[i:i + BATCH]) for i in range(0, n, BATCH)]


def outcome_seconds(run_dir: Path, cells: list[list[Outcomes]], variant: int) -> float:
    """Join and write every cell's outcomes; seconds per cell."""
    start = time.perf_counter()
    for c, pieces in enumerate(cells):
        write_outcomes(run_dir, ("variant", str(variant), "cell", str(c)), "image-set", Outcomes.joined(pieces))
    return (time.perf_counter() - start) / len(cells)


def eval_seconds_per_image(device: torch.device) -> float:
    cfg = ModelConfig(arch="resnet18", num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD,
                      dataset="cifar10", arch_kwargs={})
    model = RobustModel(build_net(cfg), cfg).eval().to(device)
    x = torch.rand(1024, 3, 32, 32, device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), BATCH):
            model(x[i:i + BATCH]).argmax(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--cells", type=int, default=76)
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    malloc = keep_freed_memory()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    cells = [cell_pieces(rng, args.n) for _ in range(args.cells)]
    write, evaluate = [], []
    with tempfile.TemporaryDirectory(prefix="robustlab-bench-") as tmp:
        for r in range(args.repeats):  # alternating, so that both see the same machine load
            run_dir = Path(tmp) / f"run{r}"
            run_dir.mkdir()
            write += [outcome_seconds(run_dir, cells, v) for v in range(args.variants)]
            evaluate.append(eval_seconds_per_image(device) * args.n)
        files = sorted((Path(tmp) / "run0" / "outcomes").glob("*.npz"))
        size = sum(f.stat().st_size for f in files)
        on_disk = sum(f.stat().st_blocks * 512 for f in files)
    per_cell_write, per_cell_eval = statistics.median(write), statistics.median(evaluate)
    print(f"device {device}, malloc: {malloc}, {args.cells} cells x {args.n} images x {args.variants} variants")
    print(f"outcome files: {len(files)}, {size / 1e6:.2f} MB ({size / len(files) / 1e3:.1f} KB per cell), "
          f"{on_disk / 1e6:.2f} MB on disk (file system blocks)")
    print(f"per cell: outcomes {1e3 * per_cell_write:.1f} ms (join + write + fsync), evaluation "
          f"{per_cell_eval:.1f} s (ResNet-18, CIFAR, {args.n} images): {100 * per_cell_write / per_cell_eval:.3f}% "
          "of run time")


if __name__ == "__main__":
    main()
