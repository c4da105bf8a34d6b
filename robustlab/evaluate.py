"""One evaluation run: load the data and the models, run their cells into a run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from robustlab.checkpoints import load_model, sha256_file
from robustlab.data import load_dataset
from robustlab.progress import progress_bars
from robustlab.results import Record
from robustlab.rundir import RunDir, default_run_dir
from robustlab.runner import Cell, RunInfo, check_compatible, resolve_device, run_cells


def evaluate(ckpts: Sequence[str], *, dataset: str, data_dir: str | None = None, arch: str | None = None,
             n: int | None = None, batch_size: int = 256, device: str = "auto", out: str | Path | None = None,
             seed: int = 0, quiet: bool = False, arguments: dict[str, Any] | None = None) -> tuple[RunDir, list[Record]]:
    """Evaluate every checkpoint on clean `dataset`; all bad input is refused before anything is written."""
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir)
    models = [load_model(c, arch=arch, device=dev) for c in ckpts]
    for model in models:
        check_compatible(model, data)
    run = RunDir(out or default_run_dir(f"{models[0].name}-{dataset}" if len(models) == 1 else dataset),
                 arguments=arguments or {}, device=dev)
    progress = progress_bars(quiet)
    records: list[Record] = []
    for model in models:
        sha = sha256_file(model.checkpoint_path)
        run.add_model(model.name, {"checkpoint": str(model.checkpoint_path), "sha256": sha,
                                   "config": model.config.to_dict()})
        info = RunInfo(checkpoint_sha256=sha, seed=seed, batch_size=batch_size, device=dev, n=n)
        records += run_cells(model, data, [Cell()], info, run.store, progress)
    run.finish()
    return run, records
