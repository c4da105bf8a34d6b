"""The Python entry: evaluate any `nn.Module` (or checkpoint) in one call, and results as DataFrames.

    import robustlab
    df = robustlab.evaluate(net, dataset="fashion-mnist", corruptions="gaussian_noise", severities=[3],
                            attack="pgd-linf", eps=["2/255"])
    robustlab.summarize(df)
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch
import torch.nn as nn

from robustlab.errors import RobustlabError
from robustlab.models import ModelConfig, RobustModel

if TYPE_CHECKING:
    from robustlab.data import ImageSet

PYTHON_PREFIX = "python:"  # how a model built in Python is named among a run's checkpoints
OUTCOMES_ATTR = "robustlab_outcomes"  # a frame's per-image outcomes held in memory (a run in a removed directory)


def evaluate(model: nn.Module | str | os.PathLike, *, dataset: str, data_dir: str | None = None,
             n: int | None = None, corruptions: str | None = None, severities: Sequence[int] | None = None,
             attacks: str | None = None, attack: str | None = None, eps: Sequence[str | float] = (),
             norm: str | None = None, steps: int | None = None, queries: int | None = None,
             alpha: str | float | None = None, restarts: int = 1, transfer_from: Sequence[str] = (),
             lmbda: float | None = None, adaptive: str | None = None, per_image: bool = False,
             cascade: bool = False, name: str | None = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, device: str = "auto", seed: int = 0, batch_size: int = 256,
             out: str | os.PathLike | None = None, progress: bool = True) -> pd.DataFrame:
    """Evaluate a model as `robustlab eval` does and return its rows (the results schema) as a DataFrame.

    `model`: an `nn.Module` taking NCHW pixels in [0, 1] in eval mode (with `mean`/`std` if it expects normalized
    input), a checkpoint path, or `zoo:NAME`. The other arguments mirror `robustlab eval`'s options. A module's
    rows are named `name` (default: its class name) and identified by a digest of its parameters and buffers.
    With `out` the run is an ordinary run directory (resumable, reportable); without it, nothing is written
    outside a temporary directory that is removed (the per-image outcomes are then held in the frame's attrs,
    where `summarize` finds them).

        >>> df = robustlab.evaluate("zoo:resnet18-fashion", dataset="fashion-mnist", n=200)
        >>> float(df["accuracy"].iloc[0])
    """
    from robustlab.config import EvalConfig, attack_specs  # the attack libraries load when a run needs them
    from robustlab.data import load_dataset
    from robustlab.evaluation import evaluate as run_evaluation
    models = None
    if isinstance(model, (str, os.PathLike)):
        ckpts: tuple[str, ...] = (str(model),)
        if name is not None or mean is not None or std is not None:
            raise RobustlabError("name=, mean= and std= apply to a model built in Python; a checkpoint carries its "
                                 "own: drop them")
    elif isinstance(model, nn.Module):
        wrapped = as_robust_model(model, load_dataset(dataset, data_dir), dataset=dataset, name=name, mean=mean,
                                  std=std)
        models, ckpts = [wrapped], (PYTHON_PREFIX + wrapped.name,)
    else:
        raise RobustlabError(f"model must be an nn.Module, a checkpoint path or zoo:NAME, got {type(model).__name__}")
    specs = attack_specs(attacks, attack, eps=tuple(eps), norm=norm, steps=steps, alpha=alpha, restarts=restarts,
                         queries=queries, transfer_from=tuple(transfer_from))
    config = EvalConfig(ckpts=ckpts, dataset=dataset, data_dir=data_dir, n=n, batch_size=batch_size, device=device,
                        seed=seed, corruptions=corruptions, severities=tuple(severities) if severities else None,
                        lmbda=lmbda, adaptive=adaptive, per_image=per_image, attacks=tuple(specs),
                        transfer_from=tuple(transfer_from), cascade=cascade, quiet=not progress,
                        out=None if out is None else str(out))
    if out is not None:
        run_evaluation(config, models)
        return load_results(out)
    with tempfile.TemporaryDirectory(prefix="robustlab-") as tmp:
        run = Path(tmp) / "run"
        run_evaluation(dataclasses.replace(config, out=str(run)), models)
        df = load_results(run)
        from robustlab.reports.runs import outcome_loader
        kept: dict = {}
        load = outcome_loader(kept)
        for _, row in df.iterrows():  # read before the directory goes: summarize finds them in the frame
            load(row)
        df.attrs[OUTCOMES_ATTR] = kept
        return df


def as_robust_model(module: nn.Module, data: ImageSet, *, dataset: str, name: str | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> RobustModel:
    """A module as robustlab evaluates it (pixels in [0, 1] in, one row of logits per image out), checked on two
    of the dataset's images: eval mode, logits of the dataset's number of classes."""
    from robustlab.data import to_pixels
    label = name or type(module).__name__
    if any(m.training for m in module.modules()):
        raise RobustlabError(f"model {label} is in training mode; call model.eval() before evaluating it (dropout "
                             "and BatchNorm batch statistics would change its answers)")
    if isinstance(module, RobustModel):
        if name is not None:
            module.name = name
        return module
    images, _ = next(iter(data.batches(2, 2)))
    channels = images.shape[1]
    for what, values in (("mean", mean), ("std", std)):
        if values is not None and (len(values) != channels or not all(math.isfinite(v) for v in values)):
            raise RobustlabError(f"{what}= must give {channels} finite numbers (one per channel of {dataset}), "
                                 f"got {list(values)}")
    if std is not None and any(v <= 0 for v in std):
        raise RobustlabError(f"std= must be positive, got {list(std)}")
    config = ModelConfig(arch=PYTHON_PREFIX + type(module).__name__, num_classes=data.num_classes,
                         input_size=data.image_size[0], mean=tuple(mean or (0.0,) * channels),
                         std=tuple(std or (1.0,) * channels), dataset=dataset)
    wrapped = RobustModel(module, config, name=label).eval()
    device = next((t.device for t in [*module.parameters(), *module.buffers()]), torch.device("cpu"))
    try:
        with torch.inference_mode():
            logits = wrapped.to(device)(to_pixels(images, device))
    except Exception as e:  # the user's code: any failure is reported with the input it got
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RobustlabError(f"model {label} failed on 2 images of {dataset} (shape {tuple(images.shape)}): "
                             f"{type(e).__name__}: {first}; make it take NCHW pixels in [0, 1] of that shape") \
            from None
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(images), data.num_classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RobustlabError(f"model {label} returned {got} for {len(images)} images of {dataset}; it must return "
                             f"logits of shape ({len(images)}, {data.num_classes}), one row per image")
    return wrapped


def load_results(*run_dirs: str | os.PathLike) -> pd.DataFrame:
    """The rows of one or more run directories (or results.csv files) as one DataFrame, read and validated
    through the results schema, with the report's `variant` and `run_dir` columns; load warnings go to stderr.

        >>> df = robustlab.load_results("runs/sdnet", "runs/resnet")
    """
    from robustlab.reports.runs import load_runs
    df, _, notes = load_runs([os.fspath(d) for d in run_dirs])
    for note in notes:
        print(f"robustlab: {note}", file=sys.stderr)
    return df


def summarize(df: pd.DataFrame, *, baseline: str | None = None) -> pd.DataFrame:
    """One row per model variant and dataset with the report's headline figures: clean accuracy, mean corruption
    accuracy (15 benchmark corruptions), mCE and relative mCE against `baseline` (a variant), and robust accuracy
    under every attack per threat model (`robust <norm> <eps>`), each with its 95% interval.

        >>> robustlab.summarize(robustlab.load_results("runs/sdnet", "runs/resnet"), baseline="resnet18")
    """
    from robustlab.reports.leaderboard import headline_table
    from robustlab.reports.report import resolve_baseline_variant
    from robustlab.reports.runs import outcome_loader
    if "variant" not in df:
        raise RobustlabError("summarize needs a frame from robustlab.evaluate or robustlab.load_results (it has no "
                             "'variant' column)")
    baseline = resolve_baseline_variant(baseline, df, list(dict.fromkeys(df["variant"])))
    return headline_table(df, outcome_loader(df.attrs.get(OUTCOMES_ATTR)), baseline=baseline)
