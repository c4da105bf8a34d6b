"""Loading run directories for a report: each results.csv through schema.read_results, its manifest and
calibration when present."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import pandas as pd

from robustlab.errors import RobustlabError
from robustlab.outcomes import Outcomes, read_outcomes
from robustlab.reports.metrics import variants
from robustlab.schema import cell_key, read_json_object, read_results

# a report shows accuracies with their intervals, beyond what every reader needs
REPORT_COLUMNS = ("accuracy", "ci_low", "ci_high")


@dataclass
class Run:
    path: Path
    name: str
    manifest: dict[str, Any] | None
    calibration: Any | None  # robustlab.adaptive.Calibration
    rows: int


def _manifest(root: Path, name: str, warnings: list[str]) -> dict[str, Any] | None:
    if not (root / "manifest.json").is_file():
        return None
    try:
        manifest = read_json_object(root / "manifest.json", "run details omitted")
    except RobustlabError as e:
        warnings.append(str(e))
        return None
    if manifest.get("status") not in (None, "finished"):
        warnings.append(f"run {name} has status '{manifest.get('status')}' (not finished): its results may be "
                        "incomplete")
    return manifest


def _calibration(root: Path, name: str, warnings: list[str]) -> Any | None:
    if not (root / "calibration.json").is_file():
        return None
    from robustlab.adaptive import load_calibration
    try:
        return load_calibration(root / "calibration.json")
    except RobustlabError as e:
        warnings.append(f"calibration of run {name} skipped: {e}")
        return None


def load_runs(run_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, list[Run], list[str]]:
    """Results of all runs in one frame (a `run` column added; a model name evaluated in several runs gets the
    run's name appended, so that its variants stay apart), the runs, and load warnings."""
    if not run_dirs:
        raise RobustlabError("no run directories given; pass one or more directories holding results.csv")
    frames: list[pd.DataFrame] = []
    runs: list[Run] = []
    warnings: list[str] = []
    for i, given in enumerate(run_dirs):
        df = read_results(given)
        csv_path = df.attrs["path"]
        missing = [c for c in REPORT_COLUMNS if c not in df.attrs["columns"]]
        if missing:
            raise RobustlabError(f"{csv_path} lacks the result columns {', '.join(missing)}; is it a robustlab "
                                 "results.csv?")
        root = csv_path.parent
        name = root.name or str(root)
        if name in {r.name for r in runs}:
            name = f"{name}#{i + 1}"
        runs.append(Run(root, name, _manifest(root, name, warnings), _calibration(root, name, warnings), len(df)))
        # the identity as written (the model is renamed below) and the directory: where a row's outcomes are
        records = cast(list[dict[str, Any]], df.to_dict("records"))  # results.csv names its columns by str
        cells = pd.Series([cell_key(r) for r in records], index=df.index, dtype=object)  # a tuple per row
        frames.append(df.assign(run=name, run_dir=str(root), cell=cells))
    df = pd.concat(frames, ignore_index=True)
    df["base_variant"] = variants(df)  # before the renaming below: one model's variant in every run
    runs_per_model = df.groupby("model")["run"].nunique()
    shared = set(runs_per_model[runs_per_model > 1].index)
    if shared:
        df["model"] = [f"{m} ({r})" if m in shared else m for m, r in zip(df["model"], df["run"])]
    df["variant"] = variants(df)
    return df, runs, warnings


def outcome_loader(cache: dict[tuple[str, str], Outcomes] | None = None) -> Callable[[pd.Series], Outcomes | None]:
    """A function from a row of load_runs' frame to its per-image outcomes (read and checked once per file, kept
    in `cache` by (run_dir, file)), None for a row whose run kept none (before schema 4); a damaged file is a
    one-line error naming it."""
    cache = {} if cache is None else cache

    def load(row: pd.Series) -> Outcomes | None:
        name = row.get("outcomes", "")
        if not name:
            return None
        key = (row["run_dir"], name)
        if key not in cache:
            cache[key] = read_outcomes(Path(row["run_dir"]), name, key=row["cell"], image_set=row["image_set"],
                                       n=int(row["n"]), correct=int(row["correct"]))
        return cache[key]
    return load
