"""The tidy record schema (one row per evaluated cell), the result store and the run manifest."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from robustlab.errors import RobustlabError

SCHEMA_VERSION = 2  # 2: queries, alpha, attack_config, batch_size and flags_model; steps only counts iterations
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
    model a transfer attack was crafted on (empty otherwise). An attack's budget is `steps` (gradient iterations
    per restart) and `queries` (score-based model queries), 0 where it has none of that kind; `alpha` its step
    size (NaN where the attack sets its own); `attack_config` every other setting robustlab fixes for it;
    `batch_size` the batch it was run in (each batch is seeded from its first image). flags lists warnings
    (gradient masking, ...) separated by ';'; `flags_model` names the model the gradient-masking flags are about
    (a transfer attack's source, whose gradients made it)."""
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
    queries: int
    alpha: float
    restarts: int
    attack_config: str
    batch_size: int
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
    flags_model: str
    seconds: float
    seed: int
    robustlab_version: str
    schema_version: int = SCHEMA_VERSION

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lambda"] = d.pop("lambda_")
        return {name: d[name] for name in COLUMNS}


COLUMNS = [("lambda" if f.name == "lambda_" else f.name) for f in dataclasses.fields(Record)]
# What a row measured, as opposed to what it found: two rows with the same identity are the same cell. An adaptive
# mode's lambda is an outcome, so only a fixed lambda is part of the identity.
IDENTITY = ("model", "checkpoint_sha256", "dataset", "split", "corruption", "severity", "attack", "attack_source",
            "norm", "eps", "steps", "queries", "alpha", "restarts", "attack_config", "batch_size", "lambda_mode",
            "lambda", "n", "seed")

IDENTITY_NUMBERS = ("severity", "eps", "steps", "queries", "alpha", "restarts", "batch_size", "lambda", "n", "seed")


def cell_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity of a row (a Record's row() or a row read back from results.csv) as CSV text."""
    return tuple("" if c == "lambda" and row["lambda_mode"] != "fixed" else str(_fmt(row[c])) for c in IDENTITY)


class ResultStore:
    """results.csv in a run directory. Every record is appended as one line in one write and synced to disk as
    soon as it exists, so a killed run loses at most the line being written; reopening drops such a torn line and
    knows which cells are done (`done`). `create` starts a new file (never over an existing one)."""

    def __init__(self, path: str | os.PathLike, *, create: bool = False) -> None:
        self.path = Path(path)
        self.done: set[tuple[str, ...]] = set()
        if create:
            self._write_line(COLUMNS, new=True)
            return
        self.done = self.inspect(self.path)
        self._drop_torn_line()

    @staticmethod
    def inspect(path: Path) -> set[tuple[str, ...]]:
        """The cells an existing results file holds, or a refusal (a link, another schema); reads only."""
        if path.is_symlink() or not path.is_file():
            raise RobustlabError(f"{path} is not a regular file robustlab wrote (a link or something else); pass "
                                 "another --out")
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != COLUMNS:
                raise RobustlabError(f"{path} has another column layout (schema); write to a new --out")
            rows = list(reader)
        data = path.read_bytes()
        if data and not data.endswith(b"\n") and rows:
            rows = rows[:-1]  # a torn last line: the cell it was writing is not done
        return {cell_key(dict(zip(COLUMNS, values))) for values in rows if len(values) == len(COLUMNS)}

    def _drop_torn_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, data.rfind(b"\n") + 1)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_line(self, values: list[Any], *, new: bool = False) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        try:
            _write_bytes(self.path, buffer.getvalue().encode(), new=new)
        except FileExistsError:
            raise RobustlabError(f"{self.path} appeared while the run started; pass another --out") from None
        except OSError as e:
            raise RobustlabError(f"cannot write {self.path} ({e.strerror}); free space or pick another --out") \
                from None

    def append(self, record: Record) -> None:
        row = record.row()
        self._write_line([_fmt(row[c]) for c in COLUMNS])
        self.done.add(cell_key(row))


def _write_bytes(path: Path, data: bytes, *, new: bool) -> None:
    """Append `data` in one write() and sync it: a killed process leaves the line whole or torn, never mixed.
    Never through a symbolic link; `new` creates the file and refuses an existing one."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if new else 0)
    fd = os.open(path, flags, 0o644)
    try:
        if os.write(fd, data) != len(data):  # only a full disk writes less to a regular file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Write JSON atomically: into a new temporary file of a random name (created exclusively, so a planted link
    is never followed), then renamed over `path`."""
    write_atomic(Path(path), (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` through an exclusively created temporary file in the same directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
