"""Clean-evaluation throughput: SDNet-18 vs ResNet-18 (full width, CIFAR input), harness vs bare loop.

    python bench/throughput.py [--device cpu|cuda] [--n 1024] [--batch-size 128] [--repeats 3]

"harness" is robustlab.evaluation.evaluate (what `robustlab eval` runs) on CIFAR-10 pickles written to a temporary
directory, timed by the run's own per-cell clock; "bare" is `model(x)` over the same images already on the
device as float tensors. Runs alternate (model x path, repeated) and the median is reported, so that the
ratios compare figures taken side by side under the same machine load. The C allocator is set up as the command
line sets it (robustlab/allocator.py); ROBUSTLAB_MALLOC=system measures glibc's defaults.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.allocator import keep_freed_memory  # noqa: E402
from robustlab.checkpoints import save_checkpoint  # noqa: E402
from robustlab.config import EvalConfig  # noqa: E402
from robustlab.device import resolve_device  # noqa: E402
from robustlab.evaluation import evaluate  # noqa: E402
from robustlab.models import ModelConfig, RobustModel, build_net  # noqa: E402
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from tests.conftest import write_cifar  # noqa: E402  (the same on-disk format the tests use)


def bare_loop(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> float:
    batches = [images[i:i + batch_size].to(device).float().div(255) for i in range(0, len(images), batch_size)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    malloc = keep_freed_memory()
    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="robustlab-bench-"))
    data_dir = write_cifar(tmp / "data", n_test=args.n)
    from robustlab.data import load_dataset
    images = torch.from_numpy(load_dataset("cifar10", data_dir).images).permute(0, 3, 1, 2).contiguous()

    ckpts, models = {}, {}
    for arch in ("resnet18", "sdnet18"):
        cfg = ModelConfig(arch=arch, num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD, dataset="cifar10")
        torch.manual_seed(0)
        models[arch] = RobustModel(build_net(cfg), cfg, name=arch).to(device).eval()
        ckpts[arch] = tmp / f"{arch}.pt"
        save_checkpoint(models[arch], ckpts[arch])
        bare_loop(models[arch], images[: args.batch_size], args.batch_size, device)  # warm-up (and SDNet's step)

    speeds: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        for arch in models:
            speeds.setdefault((arch, "bare"), []).append(bare_loop(models[arch], images, args.batch_size, device))
            _, records = evaluate(EvalConfig(ckpts=(str(ckpts[arch]),), dataset="cifar10", data_dir=str(data_dir),
                                             batch_size=args.batch_size, device=str(device),
                                             out=str(tmp / f"run-{arch}-{r}"), quiet=True))
            speeds.setdefault((arch, "harness"), []).append(records[0].n / records[0].seconds)
    med = {k: statistics.median(v) for k, v in speeds.items()}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; malloc: {malloc}; batch {args.batch_size}; {args.n} CIFAR-size images; median of "
          f"{args.repeats}")
    print(f"{'model':10s} {'bare img/s':>11s} {'harness img/s':>14s} {'harness/bare':>13s}")
    for arch in models:
        print(f"{arch:10s} {med[arch, 'bare']:11.1f} {med[arch, 'harness']:14.1f} "
              f"{med[arch, 'harness'] / med[arch, 'bare']:13.3f}")
    for path in ("bare", "harness"):
        print(f"SDNet-18 / ResNet-18 ({path}): {med['sdnet18', path] / med['resnet18', path]:.3f}")


if __name__ == "__main__":
    main()
