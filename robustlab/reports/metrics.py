"""Corruption metrics from result rows: mean accuracy, CE / mCE against a baseline, relative mCE, AlexNet mCE."""
from __future__ import annotations

import math

import pandas as pd

from robustlab.corruptions.parameters import BENCHMARK
from robustlab.errors import RobustlabError
from robustlab.schema import read_results

# Hendrycks & Dietterich: AlexNet's ImageNet-C error averaged over the five severities, and its clean error
ALEXNET_ERROR = {
    "gaussian_noise": .886428, "shot_noise": .894468, "impulse_noise": .922640, "defocus_blur": .819880,
    "glass_blur": .826268, "motion_blur": .785948, "zoom_blur": .798360, "snow": .866816, "frost": .826572,
    "fog": .819324, "brightness": .564592, "contrast": .853204, "elastic_transform": .646056, "pixelate": .717840,
    "jpeg_compression": .606500,
}
ALEXNET_CLEAN_ERROR = 0.4348


def variants(df: pd.DataFrame) -> pd.Series:
    """A label per row telling apart the evaluated variants of one model: the model, plus its lambda setting
    (fixed lambdas by value; adaptive selection by mode, since the chosen lambda varies by cell)."""
    if "lambda_mode" not in df:
        return df["model"].astype(str)
    lmbda = df["lambda"].map(lambda v: "" if pd.isna(v) else f" {v:g}")
    setting = df["lambda_mode"].where(df["lambda_mode"].str.startswith("adaptive"), "lambda" + lmbda)
    return df["model"].astype(str) + (" [" + setting + "]").where(df["lambda_mode"] != "n.a.", "")


def reference_lambda(fixed: pd.DataFrame) -> float:
    """A model's reference fixed lambda among its fixed-lambda rows: the one evaluated on most cells (ties: the
    smallest)."""
    counts = fixed.groupby("lambda").size()
    return float(min(counts[counts == counts.max()].index))


def _errors(df: pd.DataFrame, model: str) -> tuple[pd.Series, float]:
    """(corruption, severity) -> error rows of the benchmark corruptions, and the clean error, of one variant."""
    rows = df[(df["variant"] == model) & (df["attack"] == "none")]
    clean = rows[rows["corruption"] == "none"]
    corrupted = rows[rows["corruption"].isin(BENCHMARK)]
    err = corrupted.assign(error=1 - corrupted["accuracy"]).set_index(["corruption", "severity"])["error"]
    clean_error = float(1 - clean["accuracy"].iloc[0]) if len(clean) else math.nan
    return err, clean_error


def corruption_errors(df: pd.DataFrame, model: str, baseline: tuple[pd.Series, float] | None) -> dict[str, float]:
    """mCE and relative mCE against a baseline's errors (same cells), each with the number of corruptions it
    averages (`<name>_corruptions`): a ratio is undefined where the baseline's denominator is zero."""
    err, clean = _errors(df, model)
    out = {}
    if baseline is not None:
        base, base_clean = baseline
        ce, rel = [], []
        for c in sorted(set(err.index.get_level_values(0))):
            common = err[c].index.intersection(base[c].index) if c in base.index.get_level_values(0) else []
            if len(common) == 0:
                continue
            e, b = err[c].loc[common], base[c].loc[common]
            ce.append(_ratio(e.sum(), b.sum()))
            rel.append(_ratio((e - clean).sum(), (b - base_clean).sum()))
        out.update(_mean("mCE", ce))
        out.update(_mean("relative_mCE", rel))
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den != 0 else math.nan  # a baseline without errors (or drop) normalizes nothing


def _mean(name: str, values: list[float]) -> dict[str, float | int]:
    """{name: the mean over the corruptions where the ratio is defined, name_corruptions: how many those are}."""
    finite = [v for v in values if math.isfinite(v)]
    return {name: float(sum(finite) / len(finite)) if finite else math.nan, f"{name}_corruptions": len(finite)}


def alexnet_mce(err: pd.Series, clean: float) -> dict[str, float | int]:
    """ImageNet-C mCE and relative mCE normalized by AlexNet (needs all five severities of a corruption), each with
    the number of corruptions it averages."""
    ce, rel = [], []
    for c in sorted(set(err.index.get_level_values(0))):
        sev = err[c]
        if sorted(sev.index) != [1, 2, 3, 4, 5]:
            continue
        ce.append(sev.sum() / (5 * ALEXNET_ERROR[c]))
        rel.append((sev - clean).sum() / (5 * (ALEXNET_ERROR[c] - ALEXNET_CLEAN_ERROR)))
    return {**_mean("alexnet_mCE", ce), **_mean("alexnet_relative_mCE", rel)}


def corruption_summary(df: pd.DataFrame, *, baseline: str | pd.DataFrame | None = None,
                       alexnet: bool = False) -> pd.DataFrame:
    """One row per model: clean and mean corruption accuracy (unweighted over the benchmark corruption cells),
    mCE and relative mCE against `baseline` (a model name in df, or another results frame), AlexNet mCE."""
    df = df.assign(variant=variants(df))
    base = None
    if baseline is not None:
        base_df = df if isinstance(baseline, str) else baseline.assign(variant=variants(baseline))
        base_models = list(base_df["variant"].unique())
        name = baseline if isinstance(baseline, str) else (base_models[0] if len(base_models) == 1 else None)
        if name is None or name not in base_models:
            raise RobustlabError(f"baseline {baseline if isinstance(baseline, str) else 'file'} must name one model; "
                                 f"models: {', '.join(map(str, base_models))}")
        base = _errors(base_df, name)
    rows = []
    for model in df["variant"].unique():
        rows_n = df[(df["variant"] == model) & (df["attack"] == "none")].get("n", pd.Series(dtype=float))
        sizes = sorted(rows_n.dropna().unique())
        if len(sizes) > 1:
            raise RobustlabError(f"{model}'s clean and corruption rows were evaluated on different numbers of images "
                                 f"({', '.join(f'{s:g}' for s in sizes)}), so their mean would mix samples; "
                                 "evaluate them at one --n (a run resumed with --allow-config-change can do this)")
        err, clean = _errors(df, model)
        row = {"model": model, "clean_accuracy": 1 - clean, "mean_corruption_accuracy": float(1 - err.mean())
               if len(err) else math.nan, "corruption_cells": len(err)}
        row.update(corruption_errors(df, model, base))
        if alexnet:
            row.update(alexnet_mce(err, clean))
        rows.append(row)
    return pd.DataFrame(rows)


def resolve_baseline(text: str | None) -> str | pd.DataFrame | None:
    """`--baseline`: a results file or run directory when one exists at that path, else a model (variant) name."""
    if text is None:
        return None
    from pathlib import Path
    if Path(text).exists():
        return read_results(text)
    if text.endswith(".csv") or "/" in text:
        raise RobustlabError(f"--baseline {text} does not exist; give a results file, a run directory or a model name")
    return text


def read_all(paths: list[str]) -> pd.DataFrame:
    """Concatenate results.csv files (or run directories holding one), each validated by read_results."""
    return pd.concat([read_results(p) for p in paths], ignore_index=True)
