"""The evaluation loop: cells -> batched forward passes -> records, streamed to the store."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn as nn

from robustlab import __version__
from robustlab.data import ImageSet, to_pixels
from robustlab.data.base import check_labels
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.models import RobustModel, csc_layers
from robustlab.models.csc import restored
from robustlab.progress import ProgressFactory
from robustlab.results import ResultStore
from robustlab.schema import Record, cell_key, wilson_interval

T = TypeVar("T")


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
    """One evaluation condition: clean data, a corruption at a severity (param: a suite's own level), or an
    attack (an AttackSpec) on clean data, crafted on the model itself or on a `source` model (transfer)."""
    corruption: str = "none"
    severity: int = 0
    param: Any = None
    attack: Any = None
    source: str = ""


@dataclass(frozen=True)
class LambdaSetting:
    """How a CSC model's lambda is set for a row: the model's own or a fixed value ('fixed'), or chosen by
    Algorithm 1 from a calibration ('adaptive-set' per test set, 'adaptive-image' per image); 'n.a.' without CSC.
    `select_n`: per test set, select on its first select_n images only (None: on all of them, the exact rule)."""
    mode: str = "fixed"
    value: float | None = None
    calibration: Any = field(default=None, compare=False)
    select_n: int | None = None

    def subsampled(self, total: int) -> bool:
        """Whether a clean or corrupted set of `total` images gets its lambda from a part of it only."""
        return self.mode == "adaptive-set" and self.select_n is not None and self.select_n < total


@dataclass
class ModelPlan:
    model: RobustModel
    sha256: str
    settings: list[LambdaSetting]


@dataclass
class Counts:
    """What a cell's batches add up to: sums only, so that shards of a cell add up to the whole (see `merged`)."""
    n: int
    correct: int
    top5_correct: int | None
    residual_sum: float | None  # None: the model has no CSC layer
    seconds: float
    lambda_count: int = 0  # lambdas chosen per batch by an adaptive model, their sum and sum of squares
    lambda_sum: float = 0.0
    lambda_sumsq: float = 0.0

    @property
    def residual_mean(self) -> float:
        return self.residual_sum / self.n if self.residual_sum is not None and self.n else math.nan

    @property
    def lambda_mean(self) -> float:
        return self.lambda_sum / self.lambda_count if self.lambda_count else math.nan

    @property
    def lambda_std(self) -> float:
        if not self.lambda_count:
            return math.nan
        return math.sqrt(max(0.0, self.lambda_sumsq / self.lambda_count - self.lambda_mean ** 2))

    def merged(self, shard: Shard) -> "Counts":
        """The counts of the whole cell, summed over the ranks that shared it."""
        if shard.world == 1:
            return self
        n, correct, top5, residual, count, total, sumsq = shard.sum(
            [self.n, self.correct, self.top5_correct or 0, self.residual_sum or 0.0, self.lambda_count,
             self.lambda_sum, self.lambda_sumsq])
        return Counts(n=int(n), correct=int(correct), top5_correct=None if self.top5_correct is None else int(top5),
                      residual_sum=None if self.residual_sum is None else residual, seconds=shard.max(self.seconds),
                      lambda_count=int(count), lambda_sum=total, lambda_sumsq=sumsq)


def lambda_sums(chosen: torch.Tensor | None) -> tuple[int, float, float]:
    """Count, sum and sum of squares of the lambdas an adaptive model chose for a batch (none for other models)."""
    if chosen is None:
        return 0, 0.0, 0.0
    c = chosen.detach().double().reshape(-1)
    return len(c), float(c.sum()), float((c * c).sum())


class BatchLimit:
    """The largest batch that has fit on the device: on a CUDA out-of-memory error the size halves (said once
    through `log` per halving) and the same images run again; kept for the rest of the run."""

    def __init__(self, log: Callable[[str], None] = lambda _: None) -> None:
        self.size: int | None = None
        self.log = log

    def map(self, fn: Callable[[torch.Tensor, torch.Tensor, int], T], images: torch.Tensor,
            labels: torch.Tensor) -> list[T]:
        """fn(images, labels, offset of the first image) on pieces of the batch no larger than the limit."""
        results, start = [], 0
        while start < len(labels):
            size = min(self.size or len(labels), len(labels) - start)
            try:
                results.append(fn(images[start:start + size], labels[start:start + size], start))
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise RobustlabError("CUDA out of memory at batch size 1; free GPU memory (other processes), "
                                         "pick a smaller model or use --device cpu") from None
                torch.cuda.empty_cache()
                self.size = size // 2
                self.log(f"CUDA out of memory at batch size {size}; retrying at {self.size}")
                continue
            start += size
        return results


def count_correct(model: RobustModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  *, top5: bool, limit: BatchLimit | None = None) -> Counts:
    """Top-1 (and top-5) hits over batches; images with non-finite logits count as wrong."""
    start = time.perf_counter()
    first_csc = (csc_layers(model) or [None])[0]
    limit = limit or BatchLimit()

    def hits(images: torch.Tensor, labels: torch.Tensor, _offset: int) -> tuple[Any, ...]:
        labels = labels.to(device, non_blocking=True)
        logits = model(to_pixels(images, device))
        finite = torch.isfinite(logits).all(dim=1)
        top1 = ((logits.argmax(dim=1) == labels) & finite).sum()
        top5_hits = ((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1) & finite).sum() if top5 \
            else torch.zeros_like(top1)
        res = first_csc.residual.double().sum() if first_csc is not None and first_csc.residual is not None \
            else torch.zeros((), dtype=torch.float64, device=device)
        return top1, top5_hits, res, lambda_sums(getattr(model, "last_lambdas", None))

    n = 0
    correct = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    residual = torch.zeros((), dtype=torch.float64, device=device)
    lambdas = [0, 0.0, 0.0]
    with torch.inference_mode():
        for images, labels in batches:
            for top1, top5_hits, res, chosen in limit.map(hits, images, labels):
                correct += top1
                correct5 += top5_hits
                residual += res
                lambdas = [a + b for a, b in zip(lambdas, chosen)]
            n += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Counts(n=n, correct=int(correct), top5_correct=int(correct5) if top5 else None,
                  residual_sum=float(residual) if first_csc is not None else None,
                  seconds=time.perf_counter() - start, lambda_count=int(lambdas[0]), lambda_sum=lambdas[1],
                  lambda_sumsq=lambdas[2])


def checked_batches(data: ImageSet, batch_size: int, n: int | None,
                    shard: Shard = Shard()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The data's batches (a shard's only), refusing labels outside 0..num_classes-1 at the boundary."""
    indices = shard.batch_indices(min(len(data), n if n is not None else len(data)), batch_size)
    for index, (images, labels) in zip(indices, data.batches(batch_size, n, shard=shard)):
        check_labels(labels, data.num_classes, f"{data.name} {data.split}", index * batch_size)
        yield images, labels


@dataclass(frozen=True)
class RunInfo:
    """What every record of a run shares, the run's options for attacks, and this process's shard."""
    seed: int
    batch_size: int
    device: torch.device
    n: int | None = None
    diagnostics: bool = True
    save_adv: Path | None = None
    shard: Shard = Shard()
    limit: BatchLimit = field(default_factory=BatchLimit, compare=False)


def identity(model: RobustModel, sha: str, data: ImageSet, cell: Cell, setting: LambdaSetting, *, n: int, seed: int,
             lam: float, batch_size: int) -> dict[str, Any]:
    """The Record fields that say what a cell measures (results.IDENTITY), known before it runs."""
    spec = cell.attack
    return dict(
        model=model.name, arch=model.config.arch, checkpoint_sha256=sha, dataset=data.name, split=data.split,
        corruption=cell.corruption, severity=cell.severity, attack=spec.name if spec else "none",
        attack_source=cell.source, norm=spec.norm if spec else "none", eps=spec.eps if spec else math.nan,
        steps=spec.steps if spec else 0, queries=spec.queries if spec else 0,
        alpha=spec.alpha if spec and spec.alpha is not None else math.nan, restarts=spec.restarts if spec else 0,
        attack_config=spec.config if spec else "", batch_size=batch_size if spec else 0, lambda_mode=setting.mode,
        lambda_=lam, n=n, seed=seed)


def make_record(model: RobustModel, sha: str, data: ImageSet, cell: Cell, setting: LambdaSetting, counts: Counts,
                info: RunInfo, lam: float, flags: Sequence[str] = (), flags_model: str = "") -> Record:
    lo, hi = wilson_interval(counts.correct, counts.n)
    return Record(
        **identity(model, sha, data, cell, setting, n=counts.n, seed=info.seed, lam=lam, batch_size=info.batch_size),
        lambda_std=counts.lambda_std, correct=counts.correct, accuracy=counts.correct / counts.n, ci_low=lo, ci_high=hi,
        top5_correct=math.nan if counts.top5_correct is None else counts.top5_correct,
        top5_accuracy=math.nan if counts.top5_correct is None else counts.top5_correct / counts.n,
        residual_mean=counts.residual_mean, flags=";".join(flags), flags_model=flags_model, seconds=counts.seconds,
        robustlab_version=__version__)


def fixed_lambda(model: RobustModel, setting: LambdaSetting) -> float:
    """The lambda a 'fixed' setting runs the first CSC layer at: its value, else the model's own."""
    return float(setting.value if setting.value is not None else csc_layers(model)[0].lmbda)


@contextmanager
def configured(model: RobustModel, data: ImageSet, setting: LambdaSetting, info: RunInfo,
               attacked: bool) -> Iterator[tuple[nn.Module, float | None]]:
    """The module to evaluate under a lambda setting, and the lambda to report (None: read per batch).

    Per-image selection, and any selection under attack (the attack must see the whole pipeline), run through
    AdaptiveLambda, which selects on every batch it is given; per-set selection on clean data picks one lambda
    from the whole cell first, as in the paper (or from its first `select_n` images, when set).
    """
    from robustlab.adaptive import AdaptiveLambda, select_for_set
    if setting.mode == "n.a.":
        yield model, math.nan
        return
    if setting.mode == "adaptive-image" or (setting.mode == "adaptive-set" and attacked):
        yield AdaptiveLambda(model, setting.calibration, per_image=setting.mode == "adaptive-image"), None
        return
    csc = csc_layers(model)[setting.calibration.layer if setting.calibration is not None else 0]
    with restored(csc):
        if setting.mode == "adaptive-set":  # each rank sums the residuals of its batches; all get one lambda
            n = info.n if setting.select_n is None else min(info.n or setting.select_n, setting.select_n)
            with torch.inference_mode():
                csc.lmbda = select_for_set(model, checked_batches(data, info.batch_size, n, info.shard),
                                           setting.calibration, info.device, info.shard)
        else:
            csc.lmbda = fixed_lambda(model, setting)
        yield model, float(csc.lmbda)


def count_robust(model: nn.Module, batches: Iterable[tuple[int, tuple[torch.Tensor, torch.Tensor]]], spec: Any,
                 info: RunInfo, *, source: nn.Module | None = None, save: Path | None = None) -> Counts:
    """Images still correctly classified (clean and adversarial) under an attack crafted on `source` (transfer)
    or on the model itself; the harness checks eps, [0, 1], eval mode and BatchNorm statistics. `batches` are
    numbered: an attack's seed is the run seed plus the index of the batch's first image, whatever the shard."""
    from robustlab.attacks import attack_batch, transfer_batch
    start_time = time.perf_counter()
    first_csc = (csc_layers(model) or [None])[0]
    n, robust, residual, lambdas, saved = 0, 0, 0.0, [0, 0.0, 0.0], []

    def attacked(images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[Any, ...]:
        x, y = to_pixels(images, info.device), labels.to(info.device)
        if source is None:
            out = attack_batch(model, x, y, spec, seed=seed)
        else:
            out = transfer_batch(source, {"target": model}, x, y, spec, seed=seed)["target"]
        res = float(first_csc.residual.double().sum()) if first_csc is not None and first_csc.residual is not None \
            else 0.0
        return out, labels, res, lambda_sums(getattr(model, "last_lambdas", None))

    for index, (images, labels) in batches:
        first = info.seed + index * info.batch_size
        for out, piece_labels, res, chosen in info.limit.map(
                lambda im, lb, offset: attacked(im, lb, first + offset), images, labels):
            robust += int(out.robust.sum())
            residual += res
            lambdas = [a + b for a, b in zip(lambdas, chosen)]
            if save is not None:
                saved.append((out.adversarial.cpu().numpy(), piece_labels.numpy(), out.robust.cpu().numpy()))
        n += len(labels)
    if save is not None and saved:
        save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(save, adversarial=np.concatenate([a for a, _, _ in saved]).astype(np.float32),
                            labels=np.concatenate([b for _, b, _ in saved]),
                            robust=np.concatenate([c for _, _, c in saved]), eps=spec.eps, norm=spec.norm)
    return Counts(n=n, correct=robust, top5_correct=None, residual_sum=residual if first_csc is not None else None,
                  seconds=time.perf_counter() - start_time, lambda_count=int(lambdas[0]), lambda_sum=lambdas[1],
                  lambda_sumsq=lambdas[2])


def run_cells(plans: Sequence[ModelPlan], cells: Iterable[Cell], cell_data: Callable[[Cell], ImageSet],
              info: RunInfo, store: ResultStore | None, progress: ProgressFactory, *,
              sources: dict[str, RobustModel] | None = None, log: Callable[[str], None] = lambda _: None
              ) -> list[Record]:
    """Evaluate every (cell, model, lambda setting) not already in the store, appending each record to the store
    the moment it is done; returns the new records.

    Models are evaluated cell by cell, so a generated corruption is produced once and then read from its cache.
    Before a model's first white-box attack, the gradient-masking diagnostics run on its first batch; their
    flags go on every attack row of that model and setting. Under torchrun each rank counts its share of the
    batches, the counts are summed, and only rank 0 (which holds `store`) writes.
    """
    shard = info.shard
    done = shard.broadcast(store.done if store is not None else set())
    records = []
    diagnosed: dict[tuple[str, LambdaSetting], list[str]] = {}
    for cell in cells:
        data = cell_data(cell)
        total = len(data) if info.n is None else min(info.n, len(data))
        for plan in plans:
            check_compatible(plan.model, data)
            for setting in plan.settings:
                lam = fixed_lambda(plan.model, setting) if setting.mode == "fixed" else math.nan
                planned = identity(plan.model, plan.sha256, data, cell, setting, n=total, seed=info.seed, lam=lam,
                                   batch_size=info.batch_size)
                if cell_key({**planned, "lambda": lam}) in done:
                    continue
                torch.manual_seed(info.seed)
                parts = (plan.model.name, cell.corruption if cell.corruption != "none" else "",
                         f"{cell.attack.name} {cell.attack.eps:.4g}" if cell.attack else "",
                         setting.mode if setting.mode != "fixed" else "")
                own = shard.batch_indices(total, info.batch_size)
                batches = zip(own, progress(checked_batches(data, info.batch_size, info.n, shard), total=len(own),
                                            desc=" ".join(p for p in parts if p)))
                flags = [f"lambda_from_first_{setting.select_n}"] if setting.subsampled(total) else []
                flags_model = ""
                with configured(plan.model, data, setting, info, attacked=cell.attack is not None) as (module, lam):
                    if cell.attack is None:
                        counts = count_correct(module, (b for _, b in batches), info.device,
                                               top5=data.num_classes > 5, limit=info.limit)
                    else:
                        # the gradients come from the model the attack is crafted on: a transfer's source (with its
                        # own lambda), else the model itself under this setting (selection included)
                        crafted_on = sources[cell.source] if cell.source else module
                        flags_model = cell.source or plan.model.name
                        key = (cell.source, None) if cell.source else (plan.model.name, setting)
                        if key not in diagnosed:  # rank 0 alone writes rows, so it alone needs the flags
                            run_checks = info.diagnostics and shard.main
                            diagnosed[key] = diagnose(crafted_on, data, info, log) if run_checks else []
                        selection = not cell.source and setting.mode.startswith("adaptive")
                        flags = diagnosed[key] + (["bpda_selection"] if selection else [])
                        save = None if info.save_adv is None else info.save_adv / adv_file_name(plan.model, cell,
                                                                                                 setting)
                        counts = count_robust(module, batches, cell.attack, info, save=save,
                                              source=sources[cell.source] if cell.source else None)
                counts = counts.merged(shard)
                record = make_record(plan.model, plan.sha256, data, cell, setting, counts, info,
                                     counts.lambda_mean if lam is None else lam, flags, flags_model)
                if store is not None:
                    store.append(record)
                records.append(record)
    return records


DIAGNOSTIC_IMAGES = 64
DIAGNOSTIC_QUERIES = 100  # Square's budget in the black-box check: if even this beats PGD, gradients mislead


def diagnose(module: nn.Module, data: ImageSet, info: RunInfo, log: Callable[[str], None]) -> list[str]:
    """Gradient-masking flags of a model on (up to) its first 64 images; warnings go to `log`."""
    from robustlab.attacks import run_diagnostics
    images, labels = next(iter(checked_batches(data, DIAGNOSTIC_IMAGES, DIAGNOSTIC_IMAGES)))
    flags, warnings = run_diagnostics(module, to_pixels(images, info.device), labels.to(info.device), seed=info.seed,
                                      queries=DIAGNOSTIC_QUERIES)
    for w in warnings:
        log(f"warning: {getattr(module, 'name', 'model')}: {w}")
    return [name for name, raised in flags.items() if raised]


def adv_file_name(model: RobustModel, cell: Cell, setting: LambdaSetting) -> str:
    src = f"-from-{cell.source}" if cell.source else ""
    return f"{model.name}-{setting.mode}-{cell.attack.name}-{cell.attack.norm}-eps{cell.attack.eps:.6f}{src}.npz"
