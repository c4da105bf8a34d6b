"""The tidy record schema (one row per evaluated cell), the result store and the run manifest."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError

SCHEMA_VERSION = 1
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Record:
    """One evaluated cell. Accuracies are fractions in [0, 1]; NaN marks 'not applicable'. lambda is the
    CSC layer's lambda (per-image selection: the mean, with lambda_std the spread). attack_source names the
    model a transfer attack was crafted on (empty otherwise); flags lists warnings (gradient masking, ...)
    separated by ';'."""
    model: str
    arch: str
    checkpoint_sha256: str
    dataset: str
    split: str
    corruption: str
    severity: int
    attack: str
    attack_source: str
    norm: str
    eps: float
    steps: int
    restarts: int
    lambda_mode: str
    lambda_: float
    lambda_std: float
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    top5_correct: float
    top5_accuracy: float
    residual_mean: float
    flags: str
    seconds: float
    seed: int
    robustlab_version: str
    schema_version: int = SCHEMA_VERSION

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lambda"] = d.pop("lambda_")
        return {name: d[name] for name in COLUMNS}


COLUMNS = [("lambda" if f.name == "lambda_" else f.name) for f in dataclasses.fields(Record)]


class ResultStore:
    """results.csv in a run directory; every record is appended and synced to disk as soon as it exists."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            if header != COLUMNS:
                raise RobustlabError(f"{self.path} has another column layout (schema); write to a new --out")
        else:
            self._write_line(COLUMNS, mode="w")

    def _write_line(self, values: list[Any], mode: str = "a") -> None:
        try:
            with open(self.path, mode, newline="") as f:
                csv.writer(f).writerow(values)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RobustlabError(f"cannot write {self.path} ({e.strerror}); free space or pick another --out") \
                from None

    def append(self, record: Record) -> None:
        row = record.row()
        self._write_line([_fmt(row[c]) for c in COLUMNS])


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("robustlab", "torch", "torchvision", "numpy", "torchattacks", "robustbench", "pyautoattack",
                "imagecorruptions", "pandas", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
