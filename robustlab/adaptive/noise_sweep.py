"""Algorithm 1's calibration run: the accuracy and residual sweep over noise levels and lambdas, and the fit."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from robustlab.adaptive.calibration import NOISES, Calibration, best_lambdas, check_levels, fit_line
from robustlab.data import ImageSet, to_pixels
from robustlab.data.corrupted import GeneratedImageSet
from robustlab.errors import RobustlabError
from robustlab.models import RobustModel, csc_layer
from robustlab.models.csc import last_residual, restored
from robustlab.progress import ProgressFactory


def sweep(model: RobustModel, base: ImageSet, *, corruption: str, levels: Sequence[float], grid: Sequence[float],
          n: int, seed: int, batch_size: int, device: torch.device, layer: int,
          progress: ProgressFactory) -> list[dict[str, float]]:
    """Accuracy and mean residual of the CSC layer for every (noise level, grid lambda), each computed on its own."""
    csc = csc_layer(model, layer)
    rows = []
    with restored(csc):
        csc.record_residual = True
        for idx, level in enumerate(progress(levels, total=len(levels), desc=f"sweep {corruption}"), start=1):
            noisy = GeneratedImageSet(base, corruption, idx, parameters="cifar", seed=seed, param=level)
            batches = [(to_pixels(x, device), y.to(device)) for x, y in noisy.batches(batch_size, n)]
            for lmbda in grid:
                csc.lmbda = lmbda
                correct, residual, count = 0, 0.0, 0
                with torch.inference_mode():
                    for x, y in batches:
                        correct += int((model(x).argmax(1) == y).sum())
                        residual += float(last_residual(model, layer).double().sum())
                        count += len(y)
                rows.append({"level": float(level), "lambda": float(lmbda), "accuracy": correct / count,
                             "residual_mean": residual / count, "n": count})
    return rows


CALIBRATION_SUITE = "noise-calibration"  # the official script's levels (design.md)


def calibration_levels(noise: str, suite: str = CALIBRATION_SUITE) -> list[float]:
    """The levels a suite (a name or a file) lists for a noise family."""
    from robustlab.corruptions.suites import load_corruption_suite
    loaded = load_corruption_suite(suite)
    levels = [c.param for c in loaded.cells if c.corruption == NOISES[noise] and c.param is not None]
    check_levels(noise, tuple(levels), what=f"suite {suite}: {NOISES[noise]} level")
    if not levels:
        raise RobustlabError(f"suite {suite} lists no levels for {NOISES[noise]}; give a suite with a [levels] "
                             f"entry for it, or numbers (--levels 0.02,0.1)")
    return [float(v) for v in levels]


def calibrate(model: RobustModel, sha256: str, base: ImageSet, *, noise: str, levels: Sequence[float] | str | None,
              grid: Sequence[float], n: int, seed: int, batch_size: int, device: torch.device, layer: int,
              progress: ProgressFactory) -> Calibration:
    """Algorithm 1's fit on calibration images: the sweep, lambda* per level, and the least-squares line."""
    if noise not in NOISES:
        raise RobustlabError(f"unknown noise {noise!r}; use one of {', '.join(NOISES)}")
    if not levels:
        levels = calibration_levels(noise)
    elif isinstance(levels, str):  # a suite's name or file
        levels = calibration_levels(noise, levels)
    rows = sweep(model, base, corruption=NOISES[noise], levels=levels, grid=grid, n=n, seed=seed,
                 batch_size=batch_size, device=device, layer=layer, progress=progress)
    points = best_lambdas(rows)
    line = fit_line([p["residual"] for p in points], [p["lambda"] for p in points])
    return Calibration(checkpoint_sha256=sha256, arch=model.config.arch, layer=layer, noise=noise, grid=list(grid),
                       levels=[float(v) for v in levels], sweep=rows, points=points, fit=line,
                       calibration_split=f"{base.name}/{base.split}", n=min(n, len(base)), seed=seed)
