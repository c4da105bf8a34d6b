"""The evaluation loop: cells -> batched forward passes -> records, streamed to the store."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from robustlab import __version__
from robustlab.data import ImageSet, to_pixels
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


@dataclass(frozen=True)
class LambdaSetting:
    """How a CSC model's lambda is set for a row: the model's own or a fixed value ('fixed'), or chosen by
    Algorithm 1 from a calibration ('adaptive-set' per test set, 'adaptive-image' per image); 'n.a.' without CSC."""
    mode: str = "fixed"
    value: float | None = None
    calibration: Any = field(default=None, compare=False)


@dataclass
class ModelPlan:
    model: RobustModel
    sha256: str
    settings: list[LambdaSetting]


@dataclass
class Counts:
    n: int
    correct: int
    top5_correct: int | None
    residual_mean: float
    seconds: float
    lambda_mean: float = math.nan
    lambda_std: float = math.nan


def count_correct(model: RobustModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  *, top5: bool) -> Counts:
    """Top-1 (and top-5) hits over batches; images with non-finite logits count as wrong."""
    start = time.perf_counter()
    first_csc = (csc_layers(model) or [None])[0]
    n = 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    residual = torch.zeros((), dtype=torch.float64, device=device)
    lambdas = []
    with torch.inference_mode():
        for images, labels in batches:
            labels = labels.to(device, non_blocking=True)
            logits = model(to_pixels(images, device))
            if getattr(model, "last_lambdas", None) is not None:  # a model that picks lambda per batch
                lambdas.append(model.last_lambdas.double())
            finite = torch.isfinite(logits).all(dim=1)
            correct += ((logits.argmax(dim=1) == labels) & finite).sum()
            if top5:
                correct5 += ((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1) & finite).sum()
            if first_csc is not None and first_csc.residual is not None:
                residual += first_csc.residual.double().sum()
            n += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    chosen = torch.cat(lambdas) if lambdas else None
    return Counts(n=n, correct=int(correct), top5_correct=int(correct5) if top5 else None,
                  residual_mean=float(residual) / n if first_csc is not None and n else math.nan,
                  seconds=time.perf_counter() - start,
                  lambda_mean=float(chosen.mean()) if chosen is not None else math.nan,
                  lambda_std=float(chosen.std(unbiased=False)) if chosen is not None else math.nan)


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


def make_record(model: RobustModel, sha: str, data: ImageSet, cell: Cell, setting: LambdaSetting, counts: Counts,
                seed: int, lam: float) -> Record:
    lo, hi = wilson_interval(counts.correct, counts.n)
    return Record(
        model=model.name, arch=model.config.arch, checkpoint_sha256=sha, dataset=data.name, split=data.split,
        corruption=cell.corruption, severity=cell.severity, attack="none", attack_source="", norm="none",
        eps=math.nan, steps=0, restarts=0, lambda_mode=setting.mode, lambda_=lam, lambda_std=counts.lambda_std, n=counts.n, correct=counts.correct,
        accuracy=counts.correct / counts.n, ci_low=lo, ci_high=hi,
        top5_correct=math.nan if counts.top5_correct is None else counts.top5_correct,
        top5_accuracy=math.nan if counts.top5_correct is None else counts.top5_correct / counts.n,
        residual_mean=counts.residual_mean, flags="", seconds=counts.seconds, seed=seed,
        robustlab_version=__version__)


def evaluate_setting(model: RobustModel, data: ImageSet, setting: LambdaSetting, info: RunInfo,
                     progress: ProgressFactory, label: str) -> tuple[Counts, float]:
    """Counts of one model on one cell's images under one lambda setting, and the lambda to report."""
    from robustlab.adaptive import AdaptiveLambda, select_for_set
    top5 = data.num_classes > 5
    total = len(data) if info.n is None else min(info.n, len(data))
    steps = math.ceil(total / info.batch_size)
    batches = lambda: progress(checked_batches(data, info.batch_size, info.n), total=steps, desc=label)  # noqa: E731
    if setting.mode == "n.a.":
        return count_correct(model, batches(), info.device, top5=top5), math.nan
    if setting.mode == "adaptive-image":
        counts = count_correct(AdaptiveLambda(model, setting.calibration, per_image=True), batches(), info.device,
                               top5=top5)
        return counts, counts.lambda_mean
    layer = setting.calibration.layer if setting.calibration is not None else 0
    csc = csc_layers(model)[layer]
    saved = csc.lmbda
    if setting.mode == "adaptive-set":
        with torch.inference_mode():
            csc.lmbda = select_for_set(model, checked_batches(data, info.batch_size, info.n), setting.calibration,
                                       info.device)
    elif setting.value is not None:
        csc.lmbda = setting.value
    try:
        lam = float(csc.lmbda)
        return count_correct(model, batches(), info.device, top5=top5), lam
    finally:
        csc.lmbda = saved


def run_cells(plans: Sequence[ModelPlan], cells: Iterable[Cell], cell_data: Callable[[Cell], ImageSet],
              info: RunInfo, store: ResultStore, progress: ProgressFactory) -> list[Record]:
    """Evaluate every (cell, model, lambda setting), appending each record to the store the moment it is done.

    Models are evaluated cell by cell, so a generated corruption is produced once and then read from its cache.
    """
    records = []
    for cell in cells:
        data = cell_data(cell)
        for plan in plans:
            check_compatible(plan.model, data)
            for setting in plan.settings:
                torch.manual_seed(info.seed)
                label = " ".join(str(p) for p in (plan.model.name, cell.corruption if cell.corruption != "none" else "",
                                                  setting.mode if setting.mode != "fixed" else "") if p)
                counts, lam = evaluate_setting(plan.model, data, setting, info, progress, label)
                record = make_record(plan.model, plan.sha256, data, cell, setting, counts, info.seed, lam)
                store.append(record)
                records.append(record)
    return records
