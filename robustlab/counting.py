"""Counting a cell: correct images over batches, clean or under attack, with one accumulator for both; the batch
limit that halves on CUDA out-of-memory; the labelled batches a cell reads."""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
import torch.nn as nn

from robustlab.adaptive import AdaptiveLambda
from robustlab.attacks import AttackSpec, BatchOutcome, attack_batch, predicted, transfer_batch
from robustlab.data import ImageSet, to_pixels
from robustlab.data.base import check_labels
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.files import write_below
from robustlab.models import csc_layers
from robustlab.outcomes import Outcomes

T = TypeVar("T")


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
    outcomes: Outcomes | None = None  # per image, in image order

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
        """The counts of the whole cell, summed over the ranks that shared it (SUMMED; seconds: the slowest rank)."""
        if shard.world == 1:
            return self
        own = [getattr(self, name) for name in SUMMED]
        totals = shard.sum([0.0 if value is None else float(value) for value in own])
        # Any: each value has its own field's type (type(value)), which mypy cannot follow through a field name
        sums: dict[str, Any] = {name: None if value is None else type(value)(total)  # None on one rank: on all
                                for name, value, total in zip(SUMMED, own, totals)}
        outcomes = None if self.outcomes is None else Outcomes.joined(shard.gather(self.outcomes))
        return replace(self, **sums, seconds=shard.max(self.seconds), outcomes=outcomes)


# the Counts fields that add up over torchrun ranks (ignite names its summed state the same way)
SUMMED = ("n", "correct", "top5_correct", "residual_sum", "lambda_count", "lambda_sum", "lambda_sumsq")


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
    image_set: str = ""  # the fingerprint of the images evaluated (schema.Record.image_set)
    cascade: bool = False  # the worst-case mode: attacks skip the images already broken (robustlab.cascade)
    limit: BatchLimit = field(default_factory=BatchLimit, compare=False)


class Tally:
    """The running sums of a cell (images, correct, top-5, first-CSC residual, chosen lambdas), its per-image
    outcomes and its timer."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        layers = csc_layers(model)
        self.first_csc = layers[0] if layers else None
        self.start = time.perf_counter()
        self.n = 0
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.top5 = torch.zeros((), dtype=torch.int64, device=device)
        self.residual = torch.zeros((), dtype=torch.float64, device=device)
        self.lambdas = [0, 0.0, 0.0]
        self.pieces: list[Outcomes] = []

    def add(self, first: int, ok: torch.Tensor, pred: torch.Tensor, top5: torch.Tensor | None = None,
            attacked: np.ndarray | None = None) -> None:
        """One piece of a batch, its first image's index in the dataset, which images are correct (or robust) and
        the classes predicted, right after the model's forward on it (its residual and lambdas are read now).
        `attacked`: the images of the piece that the forward saw (the worst-case mode skips the others)."""
        self.n += len(ok)
        self.correct += ok.sum().to(self.device)
        if top5 is not None:
            self.top5 += top5
        seen = np.ones(len(ok), bool) if attacked is None else attacked
        csc = self.first_csc
        if seen.any() and csc is not None and csc.residual is not None:
            self.residual += csc.residual.detach().double().sum().to(self.device)
        adaptive = self.model if isinstance(self.model, AdaptiveLambda) else None
        chosen = adaptive.last_lambdas if adaptive is not None and seen.any() else None
        self.lambdas = [a + b for a, b in zip(self.lambdas, lambda_sums(chosen))]
        per_image = None
        if adaptive is not None:  # a skipped image has no lambda (NaN)
            per_image = np.full(len(ok), np.nan, np.float32)
            if chosen is not None:
                values = chosen.detach().float().reshape(-1).cpu().numpy()
                per_image[seen] = values if values.size == seen.sum() else values[0]
        self.pieces.append(Outcomes(index=np.arange(first, first + len(ok)), ok=ok.cpu().numpy().astype(bool),
                                    pred=pred.cpu().numpy().astype(np.int64), lambdas=per_image, attacked=attacked))

    def counts(self, *, top5: bool) -> Counts:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Counts(n=self.n, correct=int(self.correct), top5_correct=int(self.top5) if top5 else None,
                      residual_sum=float(self.residual) if self.first_csc is not None else None,
                      seconds=time.perf_counter() - self.start, lambda_count=int(self.lambdas[0]),
                      lambda_sum=self.lambdas[1], lambda_sumsq=self.lambdas[2], outcomes=Outcomes.joined(self.pieces))


def numbered(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[int, tuple[torch.Tensor,
                                                                                       torch.Tensor]]]:
    """Batches read in order from the first image, each with the index of its first image."""
    first = 0
    for images, labels in batches:
        yield first, (images, labels)
        first += len(labels)


def count_correct(model: nn.Module, batches: Iterable[tuple[int, tuple[torch.Tensor, torch.Tensor]]],
                  device: torch.device, *, top5: bool, limit: BatchLimit | None = None) -> Counts:
    """Top-1 (and top-5) hits over batches, each with the index of its first image (`numbered`); images with
    non-finite logits count as wrong."""
    tally = Tally(model, device)
    limit = limit or BatchLimit()

    def hits(images: torch.Tensor, labels: torch.Tensor, first: int) -> None:
        labels = labels.to(device, non_blocking=True)
        logits = model(to_pixels(images, device))
        pred = predicted(logits)
        top5_hits = None
        if top5:
            finite = pred >= 0
            top5_hits = ((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1) & finite).sum()
        tally.add(first, pred == labels, pred, top5_hits)

    with torch.inference_mode():
        for first, (images, labels) in batches:
            limit.map(lambda im, lb, offset: hits(im, lb, first + offset), images, labels)
    return tally.counts(top5=top5)


def count_robust(model: nn.Module, batches: Iterable[tuple[int, tuple[torch.Tensor, torch.Tensor]]],
                 spec: AttackSpec, info: RunInfo, *, source: nn.Module | None = None,
                 save: str | None = None, skip: Callable[[np.ndarray], np.ndarray] | None = None) -> Counts:
    """Images still correctly classified (clean and adversarial) under an attack crafted on `source` (transfer)
    or on the model itself; the harness checks eps, [0, 1], eval mode and BatchNorm statistics. Each batch comes
    with the index of its first image: an attack's seed is the run seed plus that index, and each image's random
    stream the run seed plus its own index, whatever the shard. `save` names the npz file in `info.save_adv` that
    the adversarial examples go to. `skip` (the worst-case mode): given dataset indices, which images are already
    broken; they are not attacked and count as not robust."""
    tally = Tally(model, info.device)
    saved: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def attacked(images: torch.Tensor, labels: torch.Tensor, first: int) -> None:
        todo = np.ones(len(labels), bool) if skip is None else ~skip(np.arange(first, first + len(labels)))
        ok, pred = torch.zeros(len(labels), dtype=torch.bool), torch.full((len(labels),), -1, dtype=torch.int64)
        adversarial = to_pixels(images, torch.device("cpu")) if save is not None else None  # skipped: as given
        if todo.any():
            keep = torch.from_numpy(todo)
            x, y = to_pixels(images[keep], info.device), labels[keep].to(info.device)
            seed, offsets = info.seed + first, np.flatnonzero(todo).tolist()
            if source is None:
                out: BatchOutcome = attack_batch(model, x, y, spec, seed=seed, offsets=offsets)
            else:
                out = transfer_batch(source, {"target": model}, x, y, spec, seed=seed, offsets=offsets)["target"]
            ok[keep], pred[keep] = out.robust.cpu(), out.adv_pred.cpu()
            if adversarial is not None:
                adversarial[keep] = out.adversarial.cpu()
        tally.add(first, ok, pred, attacked=None if skip is None else todo)
        if adversarial is not None:
            saved.append((adversarial.numpy(), labels.numpy(), ok.numpy()))

    for first, (images, labels) in batches:
        info.limit.map(lambda im, lb, offset: attacked(im, lb, first + offset), images, labels)
    if save is not None and info.save_adv is not None and saved:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, adversarial=np.concatenate([a for a, _, _ in saved]).astype(np.float32),
                            labels=np.concatenate([b for _, b, _ in saved]),
                            robust=np.concatenate([c for _, _, c in saved]), eps=spec.eps, norm=spec.norm)
        # save_adv is RUN/adversarial: no link below the run directory is followed
        write_below(info.save_adv.parent, info.save_adv / save, buffer.getvalue())
    return tally.counts(top5=False)


def checked_batches(data: ImageSet, batch_size: int, n: int | None,
                    shard: Shard = Shard()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The data's batches (a shard's only), refusing labels outside 0..num_classes-1 at the boundary."""
    indices = shard.batch_indices(min(len(data), n if n is not None else len(data)), batch_size)
    for index, (images, labels) in zip(indices, data.batches(batch_size, n, shard=shard)):
        check_labels(labels, data.num_classes, f"{data.name} {data.split}", index * batch_size)
        yield images, labels
