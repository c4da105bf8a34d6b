"""The calibration: the lambda-residual line fitted on synthetic noise, its file format and its checks."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from robustlab.errors import RobustlabError
from robustlab.schema import read_json_object

Residual = TypeVar("Residual", torch.Tensor, np.ndarray, float)  # what Fit.predict maps: one residual or many
CALIBRATION_FORMAT = "robustlab-calibration"
CALIBRATION_VERSION = 1
NOISES = {"gaussian": "gaussian_noise", "shot": "shot_noise", "speckle": "speckle_noise", "impulse": "impulse_noise"}

# a calibration noise level per family (design.md, Algorithm 1): its bounds, and what the level is
NOISE_LEVELS = {
    "gaussian": (0.0, 1.0, "standard deviations in [0, 1] pixels, such as 0.02,0.1"),
    "speckle": (0.0, 1.0, "relative standard deviations in 0..1, such as 0.1,0.6"),
    "impulse": (0.0, 1.0, "fractions of the pixel values in 0..1, such as 0.03,0.3"),
    # photons per unit pixel: fewer is noisier; above 1e6 the noise is below half an 8-bit step
    "shot": (0.0, 1e6, "photon counts in (0, 1e6], such as 60,6"),
}


def check_levels(noise: str, levels: tuple[float, ...], what: str = "--levels") -> None:
    """Calibration levels: numbers, finite, and in the noise family's range (shot's must be > 0: it divides)."""
    if noise not in NOISE_LEVELS:
        return  # calibrate() names the unknown noise
    low, high, meaning = NOISE_LEVELS[noise]
    for v in levels:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not (number and low <= v <= high) or (noise == "shot" and v == 0):
            raise RobustlabError(f"{what} {v!r}: {noise} noise levels are {meaning}; pass levels in that range")

@dataclass
class Fit:
    a: float
    b: float
    r2: float

    def predict(self, residual: Residual) -> Residual:
        return self.a * residual + self.b


def fit_line(residuals: Sequence[float], lambdas: Sequence[float]) -> Fit:
    """Least-squares lambda = a * r + b, with R^2 (NaN when lambda does not vary)."""
    r, lmbda = np.asarray(residuals, dtype=np.float64), np.asarray(lambdas, dtype=np.float64)
    if len(r) < 2 or np.ptp(r) == 0 or np.ptp(lmbda) == 0:  # nothing to fit: a constant lambda
        return Fit(0.0, float(lmbda.mean()), math.nan)
    a, b = np.polyfit(r, lmbda, 1)
    ss_tot = float(((lmbda - lmbda.mean()) ** 2).sum())
    r2 = 1 - float(((lmbda - (a * r + b)) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return Fit(float(a), float(b), r2)


def best_lambdas(sweep: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Per noise level: lambda* = the most accurate grid lambda (ties: the smaller) and the residual there."""
    points = []
    for level in sorted({row["level"] for row in sweep}):
        rows = sorted((r for r in sweep if r["level"] == level), key=lambda r: (-r["accuracy"], r["lambda"]))
        points.append({"level": level, "lambda": rows[0]["lambda"], "residual": rows[0]["residual_mean"],
                       "accuracy": rows[0]["accuracy"]})
    return points


@dataclass
class Calibration:
    """The whole sweep, its per-level optima and the fitted line, tied to one checkpoint."""
    checkpoint_sha256: str
    arch: str
    layer: int
    noise: str
    grid: list[float]
    levels: list[float]
    sweep: list[dict[str, float]]
    points: list[dict[str, float]]
    fit: Fit
    calibration_split: str
    n: int
    seed: int
    format: str = CALIBRATION_FORMAT
    format_version: int = CALIBRATION_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from robustlab.files import write_json
        write_json(path, self.to_json())

    def select(self, residuals: torch.Tensor) -> torch.Tensor:
        """Per column of (grid, N) residuals: the grid lambda closest to a * r(lambda) + b. At a near-tie
        (two lambdas' gaps equal to within the residuals' float rounding) the winner depends on the last bits of
        the residuals, which differ between CPUs and code paths: either tied lambda is then the rule's."""
        grid = torch.tensor(self.grid, dtype=residuals.dtype, device=residuals.device).view(-1, 1)
        gap = (grid - self.fit.predict(residuals)).abs()
        return grid.view(-1)[gap.argmin(dim=0)]  # argmin takes the first (smallest lambda) on ties


def load_calibration(path: str | Path, *, sha256: str | None = None) -> Calibration:
    """Read and validate a calibration file (format, non-empty sweep, and the checkpoint it belongs to)."""
    try:
        data = read_json_object(Path(path), "recalibrate with robustlab calibrate")
    except FileNotFoundError:
        raise RobustlabError(f"calibration file {path} does not exist; make one with robustlab calibrate") from None
    if data.get("format") != CALIBRATION_FORMAT:
        raise RobustlabError(f"{path} is not a robustlab calibration file (no format '{CALIBRATION_FORMAT}')")
    try:
        calib = Calibration(**{**data, "fit": Fit(**data["fit"])})
    except (TypeError, KeyError) as e:
        raise RobustlabError(f"{path} is a malformed calibration file ({e}); recalibrate") from None
    if not calib.sweep or not calib.grid or not calib.points:
        raise RobustlabError(f"{path} holds an empty sweep; recalibrate with robustlab calibrate")
    for part, keys in (("sweep", ("level", "lambda", "accuracy", "residual_mean")),
                       ("points", ("level", "lambda", "residual", "accuracy"))):
        rows = getattr(calib, part)
        for i, row in enumerate(rows if isinstance(rows, list) else [rows], start=1):
            values = row if isinstance(row, dict) else {}
            missing = [k for k in keys if type(values.get(k)) not in (int, float)]  # bool is no number here
            if missing:
                raise RobustlabError(f"{path}: {part} row {i} lacks {', '.join(missing)} (numbers); recalibrate "
                                     "with robustlab calibrate")
    grid = calib.grid if isinstance(calib.grid, list) else [calib.grid]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in grid):
        bad = next(v for v in grid if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v) and v >= 0))
        raise RobustlabError(f"{path}: lambda grid value {bad!r} is not a finite number >= 0; recalibrate with "
                             "robustlab calibrate")
    if not all(math.isfinite(v) for v in (calib.fit.a, calib.fit.b)):
        raise RobustlabError(f"{path} has a non-finite fit (a={calib.fit.a}, b={calib.fit.b}); recalibrate")
    if sha256 is not None and calib.checkpoint_sha256 != sha256:
        raise RobustlabError(f"{path} was calibrated for checkpoint {calib.checkpoint_sha256[:12]}, not this one "
                             f"({sha256[:12]}); calibrate this checkpoint with robustlab calibrate")
    return calib
