"""The evaluation loop: for every cell, model and lambda setting not done yet, count it and store its record."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from robustlab.adaptive import AdaptiveLambda, SetSelection, sample_mask, select_for_set
from robustlab.attacks import run_diagnostics
from robustlab.cascade import Cascade, clean_decides, skips_images
from robustlab.cells import (
    Cell,
    LambdaSetting,
    ModelPlan,
    adv_file_name,
    check_compatible,
    fixed_lambda,
    identity_fields,
    make_record,
)
from robustlab.counting import RunInfo, checked_batches, count_correct, count_robust
from robustlab.data import ImageSet, to_pixels
from robustlab.models import RobustModel, csc_layers
from robustlab.models.csc import restored
from robustlab.progress import ProgressFactory
from robustlab.results import Store
from robustlab.schema import CASCADE_FLAG, NONE, SAMPLED_FLAG, SMALLER_BATCH_FLAG, LambdaMode, Record, cell_key


@dataclass
class Applied:
    """The module to evaluate under a lambda setting, the lambda to report (None: read per batch from the adaptive
    module) and, for per-set selection, how it was chosen."""
    module: nn.Module
    lmbda: float | None
    selection: SetSelection | None = None


@contextmanager
def lambda_applied(model: RobustModel, data: ImageSet, setting: LambdaSetting, info: RunInfo,
                   attacked: bool) -> Iterator[Applied]:
    """Set a model's lambda for one cell and setting, restoring it afterwards.

    Per-image selection, and any selection under attack (the attack must see the whole pipeline), run through
    AdaptiveLambda, which selects on every batch it is given; per-set selection on clean data picks one lambda
    from the whole cell first, as in the paper (or from a seeded sample of `sample_size` of its images).
    """
    if setting.mode == LambdaMode.NOT_APPLICABLE:
        yield Applied(model, math.nan)
        return
    per_image = setting.mode == LambdaMode.ADAPTIVE_IMAGE
    if per_image or (setting.mode == LambdaMode.ADAPTIVE_SET and attacked):
        yield Applied(AdaptiveLambda(model, setting.required_calibration(), per_image=per_image), None)
        return
    csc = csc_layers(model)[setting.calibration.layer if setting.calibration is not None else 0]
    with restored(csc):
        selection = None
        if setting.mode == LambdaMode.ADAPTIVE_SET:  # each rank sums the residuals of its batches; all get one lambda
            total = len(data) if info.n is None else min(info.n, len(data))
            indices = info.shard.batch_indices(total, info.batch_size)

            def batches() -> Iterator[tuple[int, torch.Tensor]]:  # a pass over the cell (selection makes a few)
                return ((i * info.batch_size, images) for i, (images, _) in
                        zip(indices, checked_batches(data, info.batch_size, total, info.shard)))
            with torch.inference_mode():
                selection = select_for_set(model, batches, setting.required_calibration(), info.device, total=total,
                                           mask=sample_mask(total, setting.sample_size, info.seed), shard=info.shard)
            csc.lmbda = selection.lmbda
        else:
            csc.lmbda = fixed_lambda(model, setting)
        yield Applied(model, float(csc.lmbda), selection)


def run_cells(plans: Sequence[ModelPlan], cells: Iterable[Cell], cell_data: Callable[[Cell], ImageSet],
              info: RunInfo, store: Store | None, progress: ProgressFactory, *,
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
    sources = {} if sources is None else sources
    done = shard.broadcast(store.done if store is not None else set())
    records = []
    diagnosed: dict[tuple[str, LambdaSetting | None], list[str]] = {}  # (model, setting); a source: (name, None)
    cascade = Cascade() if info.cascade else None
    for cell in cells:
        data = cell_data(cell)
        total = len(data) if info.n is None else min(info.n, len(data))
        for plan in plans:
            check_compatible(plan.model, data)
            for setting in plan.settings:
                lmbda = fixed_lambda(plan.model, setting) if setting.mode == LambdaMode.FIXED else math.nan
                planned = identity_fields(plan.model, plan.sha256, data, cell, setting, n=total, seed=info.seed,
                                          lmbda=lmbda, batch_size=info.batch_size)
                cell_id = cell_key({**planned, "lambda": lmbda})
                variant = (plan.model.name, setting)
                # the worst-case mode's memory, where this cell decides images for later cells
                remembering = cascade if cell.attack is not None or clean_decides(cell, setting.mode) else None
                if cell_id in done:
                    if remembering is not None:  # a resumed worst-case run goes on from what the done cells broke
                        kept = shard.broadcast(store.kept_outcomes(cell_id) if store is not None else None)
                        if kept is not None:
                            remembering.remember(variant, cell, kept)
                    continue
                torch.manual_seed(info.seed)
                parts = (plan.model.name, cell.corruption if cell.corruption != NONE else "",
                         f"{cell.attack.name} {cell.attack.eps:.4g}" if cell.attack else "",
                         str(setting.mode) if setting.mode != LambdaMode.FIXED else "")
                shard_batches = shard.batch_indices(total, info.batch_size)
                batches = zip((i * info.batch_size for i in shard_batches),
                              progress(checked_batches(data, info.batch_size, info.n, shard), total=len(shard_batches),
                                       desc=" ".join(p for p in parts if p)))
                flags: list[str] = []
                flags_model = ""
                attacked = cell.attack is not None
                with lambda_applied(plan.model, data, setting, info, attacked=attacked) as applied:
                    module, selection = applied.module, applied.selection
                    if cell.attack is None:
                        if selection is not None and selection.n < selection.total:
                            flags = [SAMPLED_FLAG.format(n=selection.n)]
                        counts = count_correct(module, batches, info.device, top5=data.num_classes > 5,
                                               limit=info.limit)
                    else:
                        # the gradients come from the model the attack is crafted on: a transfer's source (with its
                        # own lambda), else the model itself under this setting (selection included)
                        crafted_on = sources[cell.source] if cell.source else module
                        flags_model = cell.source or plan.model.name
                        key = (cell.source, None) if cell.source else (plan.model.name, setting)
                        if key not in diagnosed:  # rank 0 alone writes rows, so it alone needs the flags
                            run_checks = info.diagnostics and shard.main
                            diagnosed[key] = diagnose(crafted_on, data, info, log) if run_checks else []
                        selects = not cell.source and setting.mode.adaptive
                        flags = diagnosed[key] + (["bpda_selection"] if selects else [])
                        save = (None if info.save_adv is None else
                                adv_file_name(plan.model, cell.attack, cell.source, setting))
                        skip = None
                        if cascade is not None and skips_images(cell.attack, setting.mode):
                            skip = partial(cascade.broken, variant, cell.attack.norm, cell.attack.eps)
                        counts = count_robust(module, batches, cell.attack, info, save=save, skip=skip,
                                              source=sources[cell.source] if cell.source else None)
                        if info.limit.size is not None and info.limit.size < info.batch_size:
                            flags = flags + [SMALLER_BATCH_FLAG.format(n=info.limit.size)]
                if remembering is not None and counts.outcomes is not None:  # this rank's images: later cells skip them
                    remembering.remember(variant, cell, counts.outcomes)
                counts = counts.merged(shard)
                subset = counts.outcomes.attacked if counts.outcomes is not None else None
                if subset is not None and not subset.all():  # a row that attacked every image stands alone
                    flags = flags + [CASCADE_FLAG.format(n=int(subset.sum()))]
                record = make_record(plan.model, plan.sha256, data, cell, setting, counts, info,
                                     counts.lambda_mean if applied.lmbda is None else applied.lmbda, flags,
                                     flags_model, selection)
                if store is not None:
                    record = store.append(record, counts.outcomes)
                records.append(record)
    return records


DIAGNOSTIC_IMAGES = 64
DIAGNOSTIC_QUERIES = 100  # Square's budget in the black-box check: if even this beats PGD, gradients mislead


def diagnose(module: nn.Module, data: ImageSet, info: RunInfo, log: Callable[[str], None]) -> list[str]:
    """Gradient-masking flags of a model on (up to) its first 64 images; warnings go to `log`."""
    images, labels = next(iter(checked_batches(data, DIAGNOSTIC_IMAGES, DIAGNOSTIC_IMAGES)))
    flags, warnings = run_diagnostics(module, to_pixels(images, info.device), labels.to(info.device), seed=info.seed,
                                      queries=DIAGNOSTIC_QUERIES)
    for w in warnings:
        log(f"warning: {getattr(module, 'name', 'model')}: {w}")
    return [name for name, raised in flags.items() if raised]
