"""PGD-10 (Linf, eps 8/255) throughput and peak memory: robustlab's attack harness vs torchattacks called directly.

    python bench/attacks.py [--device auto|cpu|cuda] [--n N] [--batch-size 32] [--repeats 3]

Both paths attack the same full-width ResNet-18 and SDNet-18 (seeded random weights, CIFAR input) on the same
images (uniform noise, labelled with the model's own predictions so that every image starts correctly classified
and both paths do the same work) with the same eps, step size (2.5 eps / steps) and steps, on the same device.
"harness" is robustlab.attacks.attack_batch (input checks, seeding, eval-mode and BatchNorm guard, frozen weights,
eps enforcement, clean and adversarial evaluation); "bare" is torchattacks.PGD(model, ...)(x, y) and nothing else;
"bare+acc" adds the clean and adversarial predictions a robust accuracy needs.
Runs alternate (model x path, repeated) and medians are reported. Peak memory: on CUDA,
torch.cuda.max_memory_allocated during the run minus the allocation before it; on CPU, the growth of the
process's peak resident set size (VmHWM of /proc/self/status, reset through /proc/self/clear_refs) over the
resident size before the run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchattacks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.attacks import attack_batch, make_spec  # noqa: E402
from robustlab.device import resolve_device  # noqa: E402
from robustlab.models import ModelConfig, RobustModel, build_net  # noqa: E402
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD  # noqa: E402

STATUS = Path("/proc/self/status")


def _status_kb(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {STATUS}")


class PeakMemory:
    """Peak memory growth of one run, in MiB: CUDA allocator peak, or peak RSS growth on CPU (Linux)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_supported = STATUS.exists() and Path("/proc/self/clear_refs").exists()

    def describe(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated during the run minus the allocation before it"
        if self.cpu_supported:
            return "growth of the peak resident set size (VmHWM, reset per run) over the resident size before the run"
        return "not measured (needs Linux /proc/self/status and clear_refs)"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.cpu_supported:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _status_kb("VmRSS") * 1024

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        if self.cpu_supported:
            return (_status_kb("VmHWM") * 1024 - self.base) / 2 ** 20
        return float("nan")


def run_bare(model: torch.nn.Module, batches: list, spec, seed: int) -> None:
    attack = torchattacks.PGD(model, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True)
    torch.manual_seed(seed)
    for x, y in batches:
        attack(x, y)


def run_bare_accuracy(model: torch.nn.Module, batches: list, spec, seed: int) -> None:
    """torchattacks plus what any robust-accuracy evaluation computes: clean and adversarial predictions."""
    attack = torchattacks.PGD(model, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True)
    torch.manual_seed(seed)
    for x, y in batches:
        adv = attack(x, y)
        with torch.no_grad():
            ((model(x).argmax(1) == y) & (model(adv).argmax(1) == y)).sum()


def run_harness(model: torch.nn.Module, batches: list, spec, seed: int) -> None:
    for x, y in batches:
        attack_batch(model, x, y, spec, seed=seed)


def timed(fn, model, batches, spec, memory: PeakMemory) -> tuple[float, float]:
    """(images/s, peak MiB) of one pass over the batches."""
    memory.start()
    start = time.perf_counter()
    fn(model, batches, spec, 0)
    if memory.device.type == "cuda":
        torch.cuda.synchronize(memory.device)
    seconds = time.perf_counter() - start
    return sum(len(x) for x, _ in batches) / seconds, memory.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 256 on CUDA")
    ap.add_argument("--n", type=int, default=None, help="images per run; default 4 batches")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device(args.device)
    batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    n = args.n or 4 * batch_size
    spec = make_spec("pgd-linf", eps="8/255", steps=10)
    memory = PeakMemory(device)
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)

    models, batches = {}, {}
    for arch in ("resnet18", "sdnet18"):
        cfg = ModelConfig(arch=arch, num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD, dataset="cifar10")
        torch.manual_seed(0)
        models[arch] = model = RobustModel(build_net(cfg), cfg, name=arch).to(device).eval()
        with torch.no_grad():
            batches[arch] = [(x, model(x).argmax(1)) for x in images.split(batch_size)]
        run_bare(model, batches[arch][:1], spec, 0)  # warm-up (and SDNet's step size)
        run_harness(model, batches[arch][:1], spec, 0)

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for arch, model in models.items():
            for path, fn in (("bare", run_bare), ("bare+acc", run_bare_accuracy), ("harness", run_harness)):
                results.setdefault((arch, path), []).append(timed(fn, model, batches[arch], spec, memory))
    speed = {k: statistics.median(s for s, _ in v) for k, v in results.items()}
    peak = {k: statistics.median(m for _, m in v) for k, v in results.items()}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; PGD-{spec.steps} Linf eps 8/255 alpha {spec.alpha:.5f}; batch {batch_size}; {n} images "
          f"32x32; median of {args.repeats}")
    print(f"peak memory: {memory.describe()}")
    print("bare: torchattacks.PGD alone; bare+acc: plus the clean and adversarial forward passes that a robust")
    print("accuracy needs (what the harness computes); time ratios are harness time / bare time")
    print(f"{'model':10s} {'bare img/s':>11s} {'bare+acc img/s':>15s} {'harness img/s':>14s} {'vs bare':>8s} "
          f"{'vs bare+acc':>12s} {'bare peak MiB':>14s} {'harness peak MiB':>17s}")
    for arch in models:
        print(f"{arch:10s} {speed[arch, 'bare']:11.2f} {speed[arch, 'bare+acc']:15.2f} {speed[arch, 'harness']:14.2f} "
              f"{speed[arch, 'bare'] / speed[arch, 'harness']:8.3f} "
              f"{speed[arch, 'bare+acc'] / speed[arch, 'harness']:12.3f} {peak[arch, 'bare']:14.1f} "
              f"{peak[arch, 'harness']:17.1f}")


if __name__ == "__main__":
    main()
