"""The evaluation loop: cells -> batched forward passes -> records, streamed to the store."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from robustlab import __version__
from robustlab.data import ImageSet, to_pixels
from robustlab.errors import RobustlabError
from robustlab.models import RobustModel, csc_layers
from robustlab.models.csc import restored
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
    n: int
    correct: int
    top5_correct: int | None
    residual_mean: float
    seconds: float
    lambda_mean: float = math.nan
    lambda_std: float = math.nan


def lambda_stats(per_batch: list[torch.Tensor]) -> dict[str, float]:
    """Mean and spread of the lambdas a per-batch-selecting model chose (NaN when it chose none)."""
    if not per_batch:
        return {"lambda_mean": math.nan, "lambda_std": math.nan}
    chosen = torch.cat([t.double().cpu() for t in per_batch])
    return {"lambda_mean": float(chosen.mean()), "lambda_std": float(chosen.std(unbiased=False))}


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
                lambdas.append(model.last_lambdas)
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
                  seconds=time.perf_counter() - start, **lambda_stats(lambdas))


def checked_batches(data: ImageSet, batch_size: int, n: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The data's batches, refusing labels outside 0..num_classes-1 at the boundary."""
    for images, labels in data.batches(batch_size, n):
        bad = labels[(labels < 0) | (labels >= data.num_classes)]
        if len(bad):
            raise RobustlabError(f"{data.name}: label {int(bad[0])} is outside 0..{data.num_classes - 1}; "
                                 "the labels file does not match the dataset")
        yield images, labels


@dataclass(frozen=True)
class RunInfo:
    """What every record of a run shares, and the run's options for attacks."""
    seed: int
    batch_size: int
    device: torch.device
    n: int | None = None
    diagnostics: bool = True
    save_adv: Path | None = None


def make_record(model: RobustModel, sha: str, data: ImageSet, cell: Cell, setting: LambdaSetting, counts: Counts,
                seed: int, lam: float, flags: Sequence[str] = ()) -> Record:
    lo, hi = wilson_interval(counts.correct, counts.n)
    spec = cell.attack
    return Record(
        model=model.name, arch=model.config.arch, checkpoint_sha256=sha, dataset=data.name, split=data.split,
        corruption=cell.corruption, severity=cell.severity, attack=spec.name if spec else "none",
        attack_source=cell.source, norm=spec.norm if spec else "none", eps=spec.eps if spec else math.nan,
        steps=spec.steps if spec else 0, restarts=spec.restarts if spec else 0, lambda_mode=setting.mode,
        lambda_=lam, lambda_std=counts.lambda_std, n=counts.n, correct=counts.correct,
        accuracy=counts.correct / counts.n, ci_low=lo, ci_high=hi,
        top5_correct=math.nan if counts.top5_correct is None else counts.top5_correct,
        top5_accuracy=math.nan if counts.top5_correct is None else counts.top5_correct / counts.n,
        residual_mean=counts.residual_mean, flags=";".join(flags), seconds=counts.seconds, seed=seed,
        robustlab_version=__version__)


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
        if setting.mode == "adaptive-set":
            n = info.n if setting.select_n is None else min(info.n or setting.select_n, setting.select_n)
            with torch.inference_mode():
                csc.lmbda = select_for_set(model, checked_batches(data, info.batch_size, n), setting.calibration,
                                           info.device)
        elif setting.value is not None:
            csc.lmbda = setting.value
        yield model, float(csc.lmbda)


def count_robust(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], spec: Any,
                 info: RunInfo, *, source: nn.Module | None = None, save: Path | None = None) -> Counts:
    """Images still correctly classified (clean and adversarial) under an attack crafted on `source` (transfer)
    or on the model itself; the harness checks eps, [0, 1], eval mode and BatchNorm statistics."""
    from robustlab.attacks import attack_batch, transfer_batch
    start_time = time.perf_counter()
    first_csc = (csc_layers(model) or [None])[0]
    n, robust, residual, lambdas, saved = 0, 0, 0.0, [], []
    for images, labels in batches:
        x, y = to_pixels(images, info.device), labels.to(info.device)
        seed = info.seed + n  # per batch, from the index of its first image
        if source is None:
            out = attack_batch(model, x, y, spec, seed=seed)
        else:
            out = transfer_batch(source, {"target": model}, x, y, spec, seed=seed)["target"]
        robust += int(out.robust.sum())
        if first_csc is not None and first_csc.residual is not None:
            residual += float(first_csc.residual.double().sum())
        if getattr(model, "last_lambdas", None) is not None:
            lambdas.append(model.last_lambdas)
        if save is not None:
            saved.append((out.adversarial.cpu().numpy(), labels.numpy(), out.robust.cpu().numpy()))
        n += len(labels)
    if save is not None and saved:
        save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(save, adversarial=np.concatenate([a for a, _, _ in saved]).astype(np.float32),
                            labels=np.concatenate([b for _, b, _ in saved]),
                            robust=np.concatenate([c for _, _, c in saved]), eps=spec.eps, norm=spec.norm)
    return Counts(n=n, correct=robust, top5_correct=None,
                  residual_mean=residual / n if first_csc is not None and n else math.nan,
                  seconds=time.perf_counter() - start_time, **lambda_stats(lambdas))


def run_cells(plans: Sequence[ModelPlan], cells: Iterable[Cell], cell_data: Callable[[Cell], ImageSet],
              info: RunInfo, store: ResultStore, progress: ProgressFactory, *,
              sources: dict[str, RobustModel] | None = None, log: Callable[[str], None] = lambda _: None
              ) -> list[Record]:
    """Evaluate every (cell, model, lambda setting), appending each record to the store the moment it is done.

    Models are evaluated cell by cell, so a generated corruption is produced once and then read from its cache.
    Before a model's first white-box attack, the gradient-masking diagnostics run on its first batch; their
    flags go on every attack row of that model and setting.
    """
    records = []
    diagnosed: dict[tuple[str, LambdaSetting], list[str]] = {}
    for cell in cells:
        data = cell_data(cell)
        total = len(data) if info.n is None else min(info.n, len(data))
        for plan in plans:
            check_compatible(plan.model, data)
            for setting in plan.settings:
                torch.manual_seed(info.seed)
                parts = (plan.model.name, cell.corruption if cell.corruption != "none" else "",
                         f"{cell.attack.name} {cell.attack.eps:.4g}" if cell.attack else "",
                         setting.mode if setting.mode != "fixed" else "")
                batches = progress(checked_batches(data, info.batch_size, info.n),
                                   total=math.ceil(total / info.batch_size), desc=" ".join(p for p in parts if p))
                flags = [f"lambda_from_first_{setting.select_n}"] if setting.subsampled(total) else []
                with configured(plan.model, data, setting, info, attacked=cell.attack is not None) as (module, lam):
                    if cell.attack is None:
                        counts = count_correct(module, batches, info.device, top5=data.num_classes > 5)
                    else:
                        key = (plan.model.name, setting)
                        if key not in diagnosed:
                            diagnosed[key] = diagnose(module, data, info, log) if info.diagnostics else []
                        flags = diagnosed[key] + (["bpda_selection"] if setting.mode.startswith("adaptive") else [])
                        save = None if info.save_adv is None else info.save_adv / adv_file_name(plan.model, cell,
                                                                                                 setting)
                        counts = count_robust(module, batches, cell.attack, info, save=save,
                                              source=sources[cell.source] if cell.source else None)
                record = make_record(plan.model, plan.sha256, data, cell, setting, counts, info.seed,
                                     counts.lambda_mean if lam is None else lam, flags)
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
