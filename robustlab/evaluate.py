"""One evaluation run: load data and models, build the cells, run them into a run directory."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from robustlab.checkpoints import load_model, nonfinite_warning, sha256_file
from robustlab.corruptions.suites import CorruptionSuite, load_corruption_suite, suite_from_names
from robustlab.data import DATASETS, ImageSet, load_dataset
from robustlab.data.corrupted import GeneratedImageSet, load_cifar_c, load_imagenet_c
from robustlab.distributed import init_from_env
from robustlab.errors import RobustlabError, write_error
from robustlab.progress import progress_bars
from robustlab.suites import suite_names
from robustlab.results import Record
from robustlab.rundir import RunDir, default_run_dir
from robustlab.adaptive import load_calibration, parse_grid
from robustlab.models import RobustModel, csc_layers
from robustlab.runner import (BatchLimit, Cell, LambdaSetting, ModelPlan, RunInfo, check_compatible, resolve_device,
                              run_cells)


def default_cache_dir() -> Path:
    """Where generated corruptions are cached: $ROBUSTLAB_CACHE, else ~/.cache/robustlab."""
    return Path(os.environ.get("ROBUSTLAB_CACHE", Path.home() / ".cache" / "robustlab")) / "corruptions"


def corruption_suite(spec: str, *, dataset: str, severities: Sequence[int] | None) -> CorruptionSuite:
    """`--corruptions`: a suite name or file, else a comma list of corruption names."""
    if Path(spec).suffix != ".toml" and spec not in suite_names("corruptions"):
        table = "imagenet" if dataset == "imagenet" else "cifar"
        return suite_from_names(spec, list(severities or [1, 2, 3, 4, 5]), table)
    suite = load_corruption_suite(spec)
    if severities:
        cells = tuple(c for c in suite.cells if c.param is not None or c.severity in severities)
        suite = CorruptionSuite(suite.name, suite.description, suite.table, cells)
    return suite


def cell_source(base: ImageSet, dataset: str, *, table: str, seed: int, c_dir: str | None, cache_dir: Path | None,
                device: Any) -> Callable[[Cell], ImageSet]:
    """Images of a cell: the clean split, the published corrupted files (c_dir), or generated ones."""
    def images(cell: Cell) -> ImageSet:
        if cell.corruption == "none":
            return base
        if c_dir is None:
            return GeneratedImageSet(base, cell.corruption, cell.severity, table=table, seed=seed, param=cell.param,
                                     cache_dir=cache_dir, device=device)
        if cell.param is not None:
            raise RobustlabError(f"{cell.corruption} level {cell.param} comes from a suite's own levels, which no "
                                 "published file holds; drop --c-dir to generate it")
        if dataset in ("cifar10", "cifar100"):
            return load_cifar_c(c_dir, cell.corruption, cell.severity, name=dataset, num_classes=base.num_classes)
        if dataset == "imagenet":
            return load_imagenet_c(c_dir, cell.corruption, cell.severity)
        raise RobustlabError(f"published corrupted files exist for cifar10, cifar100 and imagenet, not {dataset}; "
                             "drop --c-dir to generate them")
    return images


def lambda_plans(models: Sequence[RobustModel], *, lambda_value: float | None, adaptive: str | None,
                 per_image: bool, lambda_sweep: str | None, select_n: int | None = None) -> list[ModelPlan]:
    """Which lambda settings each model is evaluated under; lambda options on a model without CSC are refused."""
    asked = lambda_value is not None or adaptive is not None or lambda_sweep is not None
    if select_n is not None and (adaptive is None or per_image):
        raise RobustlabError("--select-n applies to per-set selection only; add --adaptive-lambda, drop --per-image")
    calib = load_calibration(adaptive) if adaptive is not None else None
    plans = []
    matched = False
    for model in models:
        sha = sha256_file(model.checkpoint_path)
        layers = csc_layers(model)
        if not layers:
            if asked and len(models) == 1:
                raise RobustlabError(f"{model.name} ({model.config.arch}) has no CSC layer: --lambda, "
                                     "--adaptive-lambda and --lambda-sweep apply to SDNet models only")
            plans.append(ModelPlan(model, sha, [LambdaSetting("n.a.")]))
            continue
        if lambda_sweep is not None:
            train_lambda = float(layers[0].lmbda)
            settings = [LambdaSetting("fixed", v) for v in parse_grid(lambda_sweep, train_lambda)]
        else:
            settings = [LambdaSetting("fixed", lambda_value)]
        if calib is not None and calib.checkpoint_sha256 == sha:
            matched = True
            settings.append(LambdaSetting("adaptive-image" if per_image else "adaptive-set", calibration=calib,
                                          select_n=select_n))
        plans.append(ModelPlan(model, sha, settings))
    if calib is not None and not matched:
        load_calibration(adaptive, sha256=plans[0].sha256)  # raises: calibrated for another checkpoint
    return plans


def transfer_sources(ckpts: Sequence[str], device: torch.device) -> dict[str, RobustModel]:
    """The transfer source models by name; two sources of the same name are refused (their rows would merge)."""
    sources: dict[str, RobustModel] = {}
    for ckpt in ckpts:
        model = load_model(ckpt, device=device)
        if model.name in sources:
            raise RobustlabError(f"--transfer-from names two models {model.name!r} "
                                 f"({sources[model.name].checkpoint_path} and {model.checkpoint_path}); "
                                 "copy one to a file of another name")
        sources[model.name] = model
    return sources


def evaluate(ckpts: Sequence[str], *, dataset: str, data_dir: str | None = None, arch: str | None = None,
             n: int | None = None, batch_size: int = 256, device: str = "auto", out: str | Path | None = None,
             seed: int = 0, quiet: bool = False, arguments: dict[str, Any] | None = None,
             corruptions: str | None = None, severities: Sequence[int] | None = None, c_dir: str | None = None,
             cache_dir: Path | None = None, lambda_value: float | None = None, adaptive: str | None = None,
             per_image: bool = False, lambda_sweep: str | None = None, attacks: Sequence[Any] = (),
             transfer_from: Sequence[str] = (), diagnostics: bool = True, save_adv: bool = False,
             select_n: int | None = None, allow_config_change: bool = False,
             official_config: str | None = None) -> tuple[RunDir | None, list[Record]]:
    """Evaluate every checkpoint on clean `dataset` (and its corruptions); bad input is refused before writing.

    An `out` that holds an unfinished (or finished) run with the same arguments is resumed: only the cells not in
    its results.csv run. Under torchrun every rank evaluates its share and only rank 0 writes (and gets the
    RunDir; the other ranks get None)."""
    shard, device = init_from_env(device)
    dev = resolve_device(device)
    if save_adv and shard.world > 1:
        raise RobustlabError("--save-adv writes every adversarial image from one process; run it without torchrun")
    DATASETS.get(dataset)
    suite = corruption_suite(corruptions, dataset=dataset, severities=severities) if corruptions else None
    data = load_dataset(dataset, data_dir)
    warnings: list[str] = []

    def log(message: str) -> None:
        warnings.append(message)
        if shard.main:
            print(f"robustlab: {message}", file=sys.stderr)

    models = [load_model(c, arch=arch, device=dev, official_config=official_config) for c in ckpts]
    sources = transfer_sources(transfer_from, dev)
    for model in [*models, *sources.values()]:
        check_compatible(model, data)
        damaged = nonfinite_warning(model, "images with non-finite logits count as wrong")
        if damaged:
            log(damaged)
        assumed = model.csc_settings and model.csc_settings.notice(model.name)
        if assumed:
            log(assumed)
    cells = [Cell()] + [Cell(c.corruption, c.severity, c.param) for c in (suite.cells if suite else ())]
    # with --transfer-from the target's own white-box rows come too: a transfer number means little without them
    cells += [Cell(attack=spec, source=name) for name in ["", *sources] for spec in attacks]
    source = cell_source(data, dataset, table=suite.table if suite else "cifar", seed=seed, c_dir=c_dir,
                         cache_dir=cache_dir or default_cache_dir(), device=dev)
    plans = lambda_plans(models, lambda_value=lambda_value, adaptive=adaptive, per_image=per_image,
                         lambda_sweep=lambda_sweep, select_n=select_n)
    if c_dir is not None:
        for cell in cells:  # every published file must be there before anything is written
            check_compatible(models[0], source(cell))
    if out is None:  # every rank must name the same directory
        out = shard.broadcast(default_run_dir(f"{models[0].name}-{dataset}" if len(models) == 1 else dataset))
    run = RunDir(out, arguments=arguments or {}, device=dev, allow_config_change=allow_config_change) \
        if shard.main else None
    info = RunInfo(seed=seed, batch_size=batch_size, device=dev, n=n, diagnostics=diagnostics, shard=shard,
                   save_adv=Path(out) / "adversarial" if save_adv else None, limit=BatchLimit(log))
    if run is None:
        return None, run_cells(plans, cells, source, info, None, progress_bars(True), sources=sources)
    if suite is not None:
        run.manifest["corruption_suite"] = {"name": suite.name, "table": suite.table, "description": suite.description,
                                            "levels": {f"{c.corruption}-{c.severity}": c.param for c in suite.cells
                                                       if c.param is not None}}
    for plan in plans:
        settings = plan.model.csc_settings
        run.add_model(plan.model.name, {"checkpoint": str(plan.model.checkpoint_path), "sha256": plan.sha256,
                                        "config": plan.model.config.to_dict(),
                                        **({"csc_settings": settings.to_dict()} if settings else {})})
    if adaptive:
        run.manifest["calibration"] = {"file": str(adaptive), "per_image": per_image, "select_n": select_n}
    if attacks:
        run.manifest["attacks"] = [vars(spec) for spec in attacks]
        run.manifest["transfer_from"] = {name: str(m.checkpoint_path) for name, m in sources.items()}
    run.manifest["ranks"] = shard.world
    warnings[:0] = run.manifest.get("warnings", []) if run.resumed else []  # a resumed run keeps its warnings
    run.manifest["warnings"] = warnings  # the list: what is logged from here on is in it when the manifest saves
    try:
        records = run_cells(plans, cells, source, info, run.store, progress_bars(quiet), sources=sources, log=log)
    except KeyboardInterrupt:
        run.finish("interrupted")
        raise
    except (RobustlabError, OSError) as e:
        error = e if isinstance(e, RobustlabError) else write_error(e)
        with contextlib.suppress(RobustlabError):  # on a full disk the manifest may not save: report the cause
            run.finish(f"failed: {error}")
        raise error from None
    run.finish()
    return run, records
