"""One evaluation run: load data and models, build the cells, run them into a run directory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from robustlab.checkpoints import load_model, sha256_file
from robustlab.corruptions.suites import CorruptionSuite, load_corruption_suite, suite_from_names
from robustlab.data import DATASETS, ImageSet, load_dataset
from robustlab.data.corrupted import GeneratedImageSet, load_cifar_c, load_imagenet_c
from robustlab.errors import RobustlabError
from robustlab.progress import progress_bars
from robustlab.suites import suite_names
from robustlab.results import Record
from robustlab.rundir import RunDir, default_run_dir
from robustlab.runner import Cell, RunInfo, check_compatible, resolve_device, run_cells


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


def evaluate(ckpts: Sequence[str], *, dataset: str, data_dir: str | None = None, arch: str | None = None,
             n: int | None = None, batch_size: int = 256, device: str = "auto", out: str | Path | None = None,
             seed: int = 0, quiet: bool = False, arguments: dict[str, Any] | None = None,
             corruptions: str | None = None, severities: Sequence[int] | None = None, c_dir: str | None = None,
             cache_dir: Path | None = None) -> tuple[RunDir, list[Record]]:
    """Evaluate every checkpoint on clean `dataset` (and its corruptions); bad input is refused before writing."""
    dev = resolve_device(device)
    DATASETS.get(dataset)
    suite = corruption_suite(corruptions, dataset=dataset, severities=severities) if corruptions else None
    data = load_dataset(dataset, data_dir)
    models = [load_model(c, arch=arch, device=dev) for c in ckpts]
    for model in models:
        check_compatible(model, data)
    cells = [Cell()] + [Cell(c.corruption, c.severity, c.param) for c in (suite.cells if suite else ())]
    source = cell_source(data, dataset, table=suite.table if suite else "cifar", seed=seed, c_dir=c_dir,
                         cache_dir=cache_dir or default_cache_dir(), device=dev)
    if c_dir is not None:
        for cell in cells:  # every published file must be there before anything is written
            check_compatible(models[0], source(cell))
    run = RunDir(out or default_run_dir(f"{models[0].name}-{dataset}" if len(models) == 1 else dataset),
                 arguments=arguments or {}, device=dev)
    if suite is not None:
        run.manifest["corruption_suite"] = {"name": suite.name, "table": suite.table, "description": suite.description,
                                            "levels": {f"{c.corruption}-{c.severity}": c.param for c in suite.cells
                                                       if c.param is not None}}
    pairs = []
    for model in models:
        sha = sha256_file(model.checkpoint_path)
        run.add_model(model.name, {"checkpoint": str(model.checkpoint_path), "sha256": sha,
                                   "config": model.config.to_dict()})
        pairs.append((model, sha))
    info = RunInfo(seed=seed, batch_size=batch_size, device=dev, n=n)
    records = run_cells(pairs, cells, source, info, run.store, progress_bars(quiet))
    run.finish()
    return run, records
