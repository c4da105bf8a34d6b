"""The evaluation loop: cells -> batched forward passes -> records, streamed to the store."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from robustlab import __version__
from robustlab.data import ImageSet
from robustlab.errors import RobustlabError
from robustlab.models import RobustModel, csc_layers
from robustlab.progress import ProgressFactory
from robustlab.results import Record, ResultStore, wilson_interval


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RobustlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobustlabError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    return device


def check_compatible(model: RobustModel, data: ImageSet) -> None:
    cfg = model.config
    if cfg.num_classes != data.num_classes:
        raise RobustlabError(f"model {model.name} predicts {cfg.num_classes} classes but {data.name} has "
                             f"{data.num_classes}; pick the checkpoint trained on {data.name} or the right --dataset")
    if data.image_size != (cfg.input_size, cfg.input_size):
        h, w = data.image_size
        raise RobustlabError(f"model {model.name} expects {cfg.input_size}x{cfg.input_size} images but {data.name} "
                             f"has {h}x{w}; pick a model trained at that size or the right --dataset")


@dataclass(frozen=True)
class Cell:
    """One evaluation condition: clean data, or a corruption at a severity (param: a suite's own level)."""
    corruption: str = "none"
    severity: int = 0
    param: Any = None


@dataclass
class Counts:
    n: int
    correct: int
    top5_correct: int | None
    residual_mean: float
    seconds: float


def to_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW -> float32 in [0, 1] on the device (the transfer stays uint8: 4x less to copy)."""
    return images.to(device, non_blocking=True).float().div_(255)


def count_correct(model: RobustModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  *, top5: bool) -> Counts:
    """Top-1 (and top-5) hits over batches; images with non-finite logits count as wrong."""
    start = time.perf_counter()
    first_csc = (csc_layers(model) or [None])[0]
    n = 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    residual = torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode():
        for images, labels in batches:
            labels = labels.to(device, non_blocking=True)
            logits = model(to_pixels(images, device))
            finite = torch.isfinite(logits).all(dim=1)
            correct += ((logits.argmax(dim=1) == labels) & finite).sum()
            if top5:
                correct5 += ((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1) & finite).sum()
            if first_csc is not None and first_csc.residual is not None:
                residual += first_csc.residual.double().sum()
            n += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Counts(n=n, correct=int(correct), top5_correct=int(correct5) if top5 else None,
                  residual_mean=float(residual) / n if first_csc is not None and n else math.nan,
                  seconds=time.perf_counter() - start)


def checked_batches(data: ImageSet, batch_size: int, n: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The data's batches, refusing labels outside 0..num_classes-1 at the boundary."""
    for images, labels in data.batches(batch_size, n):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= data.num_classes):
            raise RobustlabError(f"{data.name}: label {int(labels.max())} is outside 0..{data.num_classes - 1}; "
                                 "the labels file does not match the dataset")
        yield images, labels


@dataclass(frozen=True)
class RunInfo:
    """What every record of a run shares."""
    seed: int
    batch_size: int
    device: torch.device
    n: int | None = None


def make_record(model: RobustModel, sha: str, data: ImageSet, cell: Cell, counts: Counts, seed: int) -> Record:
    first_csc = (csc_layers(model) or [None])[0]
    lo, hi = wilson_interval(counts.correct, counts.n)
    return Record(
        model=model.name, arch=model.config.arch, checkpoint_sha256=sha, dataset=data.name, split=data.split,
        corruption=cell.corruption, severity=cell.severity, attack="none", norm="none", eps=math.nan, steps=0,
        lambda_mode="fixed" if first_csc else "n.a.", lambda_=first_csc.lmbda if first_csc else math.nan,
        n=counts.n, correct=counts.correct, accuracy=counts.correct / counts.n, ci_low=lo, ci_high=hi,
        top5_correct=math.nan if counts.top5_correct is None else counts.top5_correct,
        top5_accuracy=math.nan if counts.top5_correct is None else counts.top5_correct / counts.n,
        residual_mean=counts.residual_mean, seconds=counts.seconds, seed=seed, robustlab_version=__version__)


def run_cells(models: Sequence[tuple[RobustModel, str]], cells: Iterable[Cell], cell_data: Callable[[Cell], ImageSet],
              info: RunInfo, store: ResultStore, progress: ProgressFactory) -> list[Record]:
    """Evaluate every (cell, model) pair, appending each record to the store the moment it is done.

    `models` pairs each model with its checkpoint sha256; `cell_data` gives the images of a cell. Models are
    evaluated cell by cell, so a generated corruption is produced once and then read from its cache.
    """
    records = []
    for cell in cells:
        data = cell_data(cell)
        total = len(data) if info.n is None else min(info.n, len(data))
        for model, sha in models:
            check_compatible(model, data)
            torch.manual_seed(info.seed)
            label = model.name if cell.corruption == "none" else f"{model.name} {cell.corruption}-{cell.severity}"
            batches = progress(checked_batches(data, info.batch_size, info.n),
                               total=math.ceil(total / info.batch_size), desc=label)
            counts = count_correct(model, batches, info.device, top5=data.num_classes > 5)
            record = make_record(model, sha, data, cell, counts, info.seed)
            store.append(record)
            records.append(record)
    return records
