"""The evaluation loop: cells -> batched forward passes -> records, streamed to the store."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

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
    """One evaluation condition (this release: clean data)."""
    corruption: str = "none"
    severity: int = 0


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
    checkpoint_sha256: str
    seed: int
    batch_size: int
    device: torch.device
    n: int | None = None


def run_cells(model: RobustModel, data: ImageSet, cells: Iterable[Cell], info: RunInfo, store: ResultStore,
              progress: ProgressFactory) -> list[Record]:
    """Evaluate every cell, append each record to the store the moment it is done, return them."""
    check_compatible(model, data)
    records = []
    total = len(data) if info.n is None else min(info.n, len(data))
    first_csc = (csc_layers(model) or [None])[0]
    for cell in cells:
        torch.manual_seed(info.seed)
        batches = progress(checked_batches(data, info.batch_size, info.n), total=math.ceil(total / info.batch_size),
                           desc=f"{model.name} {cell.corruption}")
        counts = count_correct(model, batches, info.device, top5=data.num_classes > 5)
        lo, hi = wilson_interval(counts.correct, counts.n)
        record = Record(
            model=model.name, arch=model.config.arch, checkpoint_sha256=info.checkpoint_sha256, dataset=data.name,
            split=data.split, corruption=cell.corruption, severity=cell.severity, attack="none", norm="none",
            eps=math.nan, steps=0, lambda_mode="fixed" if first_csc else "n.a.",
            lambda_=first_csc.lmbda if first_csc else math.nan, n=counts.n, correct=counts.correct,
            accuracy=counts.correct / counts.n, ci_low=lo, ci_high=hi,
            top5_correct=math.nan if counts.top5_correct is None else counts.top5_correct,
            top5_accuracy=math.nan if counts.top5_correct is None else counts.top5_correct / counts.n,
            residual_mean=counts.residual_mean, seconds=counts.seconds, seed=info.seed,
            robustlab_version=__version__)
        store.append(record)
        records.append(record)
    return records

