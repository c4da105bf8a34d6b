"""RDSN feature extraction speed (images/s) at several k, depths and pooling, next to the shipped digits ResNet-18
and SDNet-18 forward passes on the same 32x32 images.

    python bench/rdsn.py [--device cpu|cuda] [--n 256] [--batch-size 64] [--repeats 3]

Runs alternate (variant after variant, repeated) and the median is reported, so the figures compare variants
measured side by side under the same machine load.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.checkpoints import load_model  # noqa: E402
from robustlab.device import resolve_device  # noqa: E402
from robustlab.models import ModelConfig, RobustModel, build_net  # noqa: E402

RDSN_VARIANTS = [(512, 3, "none"), (2048, 3, "none"), (2048, 3, "avg"), (2048, 2, "avg"), (4096, 3, "avg")]


def rdsn(k: int, depth: int, pool: str) -> RobustModel:
    cfg = ModelConfig(arch="rdsn", num_classes=10, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                      arch_kwargs={"k": k, "depth": depth, "pool": pool})
    return RobustModel(build_net(cfg), cfg).eval()


def timed(run: Callable[[torch.Tensor], object], batches: list[torch.Tensor], device: torch.device) -> float:
    """Images per second of `run` over the batches."""
    with torch.inference_mode():
        run(batches[0])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in batches:
            run(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(min(args.batch_size, args.n - i), 3, 32, 32, generator=gen).to(device)
               for i in range(0, args.n, args.batch_size)]
    variants: dict[str, Callable[[torch.Tensor], object]] = {}
    for k, depth, pool in RDSN_VARIANTS:
        model = rdsn(k, depth, pool).to(device)
        variants[f"rdsn features k={k} depth={depth} pool={pool}"] = \
            lambda x, m=model: m.net.features(m.normalize(x))
    for name in ("rdsn-digits", "resnet18-digits", "sdnet18-digits"):
        variants[f"zoo:{name} forward"] = load_model(f"zoo:{name}", device=device)
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            speeds[name].append(timed(run, batches, device))
    print(f"device: {device}, {torch.get_num_threads()} threads; {args.n} images 32x32, batch {args.batch_size}, "
          f"median of {args.repeats}")
    width = max(map(len, variants))
    print(f"{'variant'.ljust(width)}  img/s")
    for name, values in speeds.items():
        print(f"{name.ljust(width)}  {statistics.median(values):7.1f}")


if __name__ == "__main__":
    main()
