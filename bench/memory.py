"""Peak memory of a CIFAR-10-C evaluation: one batch, not one corrupted split.

    python bench/memory.py [--n 10000] [--batch-sizes 256,1024] [--device auto|cpu|cuda]

Writes a synthetic CIFAR-10-C directory (2 corruptions x 5 severities x N random images, the published layout:
<corruption>.npy of shape (5N, 32, 32, 3) uint8 and labels.npy) and 100 clean CIFAR-10 test images to a
temporary directory, then runs each variant in a fresh process and prints its peak resident set size (ru_maxrss,
Linux) and its growth over the baseline at the same batch size. Per batch size: the baseline imports robustlab,
loads the model and the clean split and evaluates one batch read from the C directory; `evaluate` (what
`robustlab eval` runs) evaluates all 11 cells (clean, 2 corruptions x 5 severities); and at the first batch size,
as the control that shows what holding a split costs, the same evaluation reads the files through memory maps
(the reader before issue #8), whose touched pages stay resident while a cell runs. The model is a pooled linear
classifier registered for the bench, so that the data path, not the network, sets the time and the memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.checkpoints import save_checkpoint  # noqa: E402
from robustlab.data.npy import NpyWriter  # noqa: E402
from robustlab.models import ModelConfig, RobustModel, build_net  # noqa: E402
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD, ArchSpec, register_arch  # noqa: E402
from tests.conftest import write_cifar  # noqa: E402  (the same on-disk format the tests use)

CORRUPTIONS = ("fog", "snow")
CLEAN_IMAGES = 100
ARCH = "bench-pooled-linear"
MIB = 1 << 20


def pooled_linear(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 4 * 4, num_classes))


register_arch(ArchSpec(ARCH, pooled_linear, "bench", "4x4 average pool + linear (bench/memory.py only)"))


def write_data(root: Path, n: int) -> None:
    """Clean pickles, the C directory (written in chunks, so the writer stays small too) and a checkpoint."""
    write_cifar(root / "data", n_test=CLEAN_IMAGES)
    c_dir = root / "c"
    c_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in CORRUPTIONS:
        with NpyWriter(c_dir / f"{name}.npy", (5 * n, 32, 32, 3), np.uint8) as writer:
            for start in range(0, 5 * n, 4096):
                writer.append(rng.integers(0, 256, (min(4096, 5 * n - start), 32, 32, 3), dtype=np.uint8))
    np.save(c_dir / "labels.npy", rng.integers(0, 10, 5 * n))
    cfg = ModelConfig(arch=ARCH, num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD, dataset="cifar10")
    torch.manual_seed(0)
    save_checkpoint(RobustModel(build_net(cfg), cfg), root / "model.pt")


def child(variant: str, root: Path, batch_size: int, device: str) -> dict[str, float]:
    """Run one variant in this (fresh) process, its C allocator set up as the command line's; its peak memory in
    MiB and seconds."""
    from robustlab.allocator import keep_freed_memory
    keep_freed_memory()
    from robustlab.checkpoints import load_model
    from robustlab.config import EvalConfig
    from robustlab.counting import count_correct
    from robustlab.data import load_dataset
    from robustlab.data.corrupted import load_cifar_c
    from robustlab.device import resolve_device
    from robustlab.evaluation import evaluate

    dev = resolve_device(device)
    start = time.perf_counter()
    if variant == "baseline":
        model = load_model(root / "model.pt", device=dev)
        load_dataset("cifar10", root / "data")
        block = load_cifar_c(root / "c", CORRUPTIONS[0], 1, name="cifar10", num_classes=10)
        count_correct(model, [next(block.batches(batch_size))], dev, top5=True)
    else:
        if variant == "mmap":
            import robustlab.data.corrupted as corrupted
            corrupted.NpyRows = lambda path, start=0, stop=None: np.load(path, mmap_mode="r")[start:stop]
        evaluate(EvalConfig(ckpts=(str(root / "model.pt"),), dataset="cifar10", data_dir=str(root / "data"),
                            c_dir=str(root / "c"), corruptions=",".join(CORRUPTIONS), batch_size=batch_size,
                            device=device, quiet=True, out=str(root / f"run-{variant}-{batch_size}")))
    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.perf_counter() - start}
    if dev.type == "cuda":
        peak["cuda"] = torch.cuda.max_memory_allocated(dev) / MIB
    return peak


def measure(variant: str, root: Path, batch_size: int, device: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--root", str(root), "--batch-sizes",
                           str(batch_size), "--device", device], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="images per severity (CIFAR-10-C: 10000)")
    ap.add_argument("--batch-sizes", default="256,1024")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.root, sizes[0], args.device)))
        return
    with tempfile.TemporaryDirectory(prefix="robustlab-bench-memory-") as tmp:
        root = Path(tmp)
        write_data(root, args.n)
        split = args.n * 32 * 32 * 3 / MIB
        print(f"one corrupted split: {args.n} x 32x32x3 uint8 = {split:.1f} MiB; the evaluation reads "
              f"{2 * 5} splits ({2 * 5 * split:.0f} MiB) and {CLEAN_IMAGES} clean images")
        print(f"{'variant':<36}{'batch':>6}{'peak RSS MiB':>14}{'- baseline':>12}{'seconds':>9}")
        for b in sizes:
            variants = [("baseline (model, one batch)", "baseline"), ("evaluate, streamed", "eval")]
            if b == sizes[0]:
                variants.append(("evaluate, memory-mapped (before)", "mmap"))
            base = None
            for name, variant in variants:
                peak = measure(variant, root, b, args.device)
                base = base or peak["rss"]
                print(f"{name:<36}{b:>6}{peak['rss']:>14.1f}{peak['rss'] - base:>12.1f}{peak['seconds']:>9.1f}"
                      + (f"   CUDA peak {peak['cuda']:.1f} MiB" if "cuda" in peak else ""), flush=True)

if __name__ == "__main__":
    main()
