"""`robustlab report`: tables and figures from one or more run directories, as report.md and one
self-contained report.html (figures embedded as PNG data URIs, CSS inline, no external links).

Every model variant (`robustlab.reports.metrics.variants`: the model plus its lambda setting) keeps one colour
in every figure (`variant_colors`). A figure whose data is absent is not drawn; a table whose data is absent
keeps its heading with a one-line note, so the report always has the same sections.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from robustlab.corruptions.tables import BENCHMARK, EXTRA
from robustlab.errors import RobustlabError
from robustlab.reports.figures import lambda_residual_figure, plt, save
from robustlab.reports.metrics import corruption_summary, variants
from robustlab.schema import wilson_interval

REQUIRED = ["model", "dataset", "split", "corruption", "severity", "attack", "norm", "eps", "lambda_mode", "lambda",
            "n", "correct", "accuracy", "ci_low", "ci_high"]
OPTIONAL_TEXT = {"attack_source": "", "flags": "", "flags_model": "", "arch": "", "attack_config": ""}
OPTIONAL_NUM = ["steps", "queries", "alpha", "restarts", "batch_size", "lambda_std", "top5_accuracy", "schema_version"]

# Flags raised by robustlab's gradient-masking diagnostics and runner (attacks/diagnostics.py, runner.py)
FLAG_MEANINGS = {
    "zero_gradients": "some images have an exactly zero input gradient: gradient attacks cannot move them",
    "eps_not_monotonic": "robust accuracy rises with eps: the attack is failing (masking or too few steps)",
    "black_box_stronger": "a black-box attack beats the white-box one: gradients are unreliable",
    "shattered_gradients": "input-gradient signs at nearby points barely agree: gradients are shattered (use BPDA, "
                           "black-box or transfer attacks)",
    "large_eps_survives": "images survive a huge eps (0.5 Linf): the attack is not working",
    "randomized": "two identical forward passes differ: the model is randomized (use EOT)",
    "bpda_selection": "adaptive lambda selection is not differentiable; gradients pass it by the identity (BPDA)",
}

TABLES = {  # id -> heading, in report order
    "runs": "Runs",
    "clean": "Clean accuracy",
    "corruption-summary": "Mean corruption accuracy and mCE",
    "per-corruption": "Accuracy per corruption (mean over severities)",
    "robust": "Robust accuracy per attack and eps",
    "lambda": "Fixed versus adaptive lambda",
    "warnings": "Warnings",
}


@dataclass
class ReportFiles:
    """What build_report wrote: the two reports, every figure file (PNG and SVG), and the tables (numeric
    frames, by the ids of TABLES; a table without data is an empty frame)."""
    markdown: Path
    html: Path
    figures: list[Path]
    tables: dict[str, pd.DataFrame]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Run:
    path: Path
    name: str
    manifest: dict[str, Any] | None
    calibration: Any | None  # robustlab.adaptive.Calibration
    rows: int


# ----------------------------------------------------------------------------------------------------- reading

def load_runs(run_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, list[Run], list[str]]:
    """Results of all runs in one frame (a `run` column added; a model name evaluated in several runs gets the
    run's name appended, so that its variants stay apart), the runs, and load warnings."""
    if not run_dirs:
        raise RobustlabError("no run directories given; pass one or more directories holding results.csv")
    frames, runs, warnings = [], [], []
    for i, given in enumerate(run_dirs):
        p = Path(given)
        csv_path = p / "results.csv" if p.is_dir() else p
        root = csv_path.parent
        if not csv_path.is_file():
            raise RobustlabError(f"{given} is not a run directory holding results.csv (nor a results.csv file)")
        try:
            text = ["model", "corruption", "attack", "lambda_mode", "norm", *OPTIONAL_TEXT]
            df = pd.read_csv(csv_path, dtype=dict.fromkeys(text, str))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise RobustlabError(f"{csv_path} is not a readable results.csv ({str(e).splitlines()[0]})") from None
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise RobustlabError(f"{csv_path} lacks the result columns {', '.join(missing)}; is it a robustlab "
                                 "results.csv?")
        for c, default in OPTIONAL_TEXT.items():
            df[c] = df[c].fillna(default).astype(str) if c in df else default
        for c in OPTIONAL_NUM:
            if c not in df:
                df[c] = math.nan
        name = root.name or str(root)
        if name in {r.name for r in runs}:
            name = f"{name}#{i + 1}"
        manifest = None
        if (root / "manifest.json").is_file():
            try:
                manifest = json.loads((root / "manifest.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                warnings.append(f"{root / 'manifest.json'} is not valid JSON ({e}); run details omitted")
            else:
                if manifest.get("status") not in (None, "finished"):
                    warnings.append(f"run {name} has status '{manifest.get('status')}' (not finished): its results "
                                    "may be incomplete")
        calib = None
        if (root / "calibration.json").is_file():
            from robustlab.adaptive import load_calibration
            try:
                calib = load_calibration(root / "calibration.json")
            except RobustlabError as e:
                warnings.append(f"calibration of run {name} skipped: {e}")
        runs.append(Run(root, name, manifest, calib, len(df)))
        frames.append(df.assign(run=name))
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise RobustlabError(f"{', '.join(map(str, run_dirs))}: no result rows to report")
    runs_per_model = df.groupby("model")["run"].nunique()
    shared = set(runs_per_model[runs_per_model > 1].index)
    if shared:
        df["model"] = [f"{m} ({r})" if m in shared else m for m, r in zip(df["model"], df["run"])]
    df["variant"] = variants(df)
    return df, runs, warnings


# ---------------------------------------------------------------------------------------------------- colours

def variant_colors(labels: Iterable[str]) -> dict[str, Any]:
    """THE palette: one colour per variant label, in the order given (tab10, then tab20, then an even hue wheel),
    used by every figure of a report so a variant looks the same everywhere."""
    labels = list(dict.fromkeys(labels))
    if len(labels) <= 10:
        colors = [plt.get_cmap("tab10")(i) for i in range(len(labels))]
    elif len(labels) <= 20:
        colors = [plt.get_cmap("tab20")(i) for i in range(len(labels))]
    else:
        colors = [plt.get_cmap("hsv")(i / len(labels)) for i in range(len(labels))]
    return dict(zip(labels, colors))


# ------------------------------------------------------------------------------------------------ formatting

def _pct(x: Any, digits: int = 2) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * float(x):.{digits}f}"


def _ci(lo: Any, hi: Any) -> str:
    return "–" if pd.isna(lo) or pd.isna(hi) else f"{100 * float(lo):.1f}–{100 * float(hi):.1f}"


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:g}" if isinstance(x, float) else str(x)


def format_eps(eps: float, norm: str = "") -> str:
    """eps as k/255 when it is one (Linf budgets usually are), else plainly."""
    if pd.isna(eps):
        return "–"
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6 and str(norm).lower() in ("linf", "l_inf", "inf"):
        return f"{round(k)}/255"
    return f"{eps:.4g}"


def _lam(row: pd.Series) -> str:
    if pd.isna(row["lambda"]):
        return "–"
    std = row.get("lambda_std", math.nan)
    return f"{row['lambda']:.3g} ± {std:.2g}" if pd.notna(std) and std > 0 else f"{row['lambda']:.3g}"


def _corruption_order(names: Iterable[str]) -> list[str]:
    known = ["none", *BENCHMARK, *EXTRA]
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda c: (known.index(c) if c in known else len(known), c))


def _order(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows sorted by the report's variant order (stable otherwise)."""
    rank = {v: i for i, v in enumerate(order)}
    return df.iloc[np.argsort([rank.get(v, len(rank)) for v in df["variant"]], kind="stable")]


# ---------------------------------------------------------------------------------------------------- tables

def runs_table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for r in runs:
        m = r.manifest or {}
        versions = m.get("versions", {}) if isinstance(m.get("versions"), dict) else {}
        rows.append({"run": r.name, "path": str(r.path), "rows": r.rows, "status": m.get("status", "–"),
                     "started": m.get("started", "–"), "device": m.get("device", "–"),
                     "robustlab": versions.get("robustlab", "–"), "torch": versions.get("torch", "–"),
                     "calibration": "yes" if r.calibration is not None else "no"})
    return pd.DataFrame(rows)


def clean_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rows = _order(df[(df["corruption"] == "none") & (df["attack"] == "none")], order)
    out = pd.DataFrame({"variant": rows["variant"], "dataset": rows["dataset"], "split": rows["split"],
                        "n": rows["n"], "accuracy": rows["accuracy"], "ci_low": rows["ci_low"],
                        "ci_high": rows["ci_high"], "top5_accuracy": rows["top5_accuracy"],
                        "lambda": rows.apply(_lam, axis=1) if len(rows) else []})
    return out.reset_index(drop=True)


def pooled_wilson(rows: pd.DataFrame) -> tuple[float, float]:
    """Wilson 95% interval on the pooled counts of several cells (the cells share images, so it is indicative)."""
    return wilson_interval(int(rows["correct"].sum()), int(rows["n"].sum()))


def summary_table(df: pd.DataFrame, order: list[str], baseline: str | None) -> pd.DataFrame:
    """corruption_summary per dataset (variants with benchmark-corruption cells only), with a pooled CI."""
    frames = []
    for dataset, sub in df.groupby("dataset", sort=False):
        base = baseline if baseline is not None and baseline in set(sub["variant"]) else None
        s = corruption_summary(sub.drop(columns="variant"), baseline=base)
        s = s[s["corruption_cells"] > 0].rename(columns={"model": "variant"})
        if s.empty:
            continue
        cis = []
        for v in s["variant"]:
            rows = sub[(sub["variant"] == v) & (sub["attack"] == "none") & sub["corruption"].isin(BENCHMARK)]
            cis.append(pooled_wilson(rows))
        s.insert(1, "dataset", dataset)
        s["ci_low"], s["ci_high"] = [c[0] for c in cis], [c[1] for c in cis]
        if base is None:
            s["mCE"], s["relative_mCE"] = math.nan, math.nan
            s["mCE_corruptions"], s["relative_mCE_corruptions"] = 0, 0
        frames.append(_order(s, order))
    cols = ["variant", "dataset", "clean_accuracy", "mean_corruption_accuracy", "ci_low", "ci_high",
            "corruption_cells", "mCE", "mCE_corruptions", "relative_mCE", "relative_mCE_corruptions"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def per_corruption_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rows = df[(df["corruption"] != "none") & (df["attack"] == "none")]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index=["dataset", "corruption"], columns="variant", values="accuracy", aggfunc="mean")
    table = table[[v for v in order if v in table.columns]]
    keys = sorted(table.index, key=lambda k: (k[0], _corruption_order(rows["corruption"]).index(k[1])))
    return table.loc[keys].reset_index()


def robust_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rows = df[df["attack"] != "none"]
    if rows.empty:
        return pd.DataFrame()
    clean = df[(df["corruption"] == "none") & (df["attack"] == "none")].groupby(["variant", "dataset"])["accuracy"]
    clean = clean.first()
    rows = rows.sort_values(["dataset", "attack", "norm", "attack_source", "corruption", "severity", "eps"],
                            kind="stable")
    rows = _order(rows, order)
    out = pd.DataFrame({
        "variant": rows["variant"], "dataset": rows["dataset"], "corruption": rows["corruption"],
        "severity": rows["severity"], "attack": rows["attack"], "source": rows["attack_source"],
        "norm": rows["norm"], "eps": rows["eps"], "steps": rows["steps"], "queries": rows["queries"],
        "restarts": rows["restarts"],
        "n": rows["n"], "accuracy": rows["accuracy"], "ci_low": rows["ci_low"], "ci_high": rows["ci_high"],
        "clean_accuracy": [clean.get((v, d), math.nan) for v, d in zip(rows["variant"], rows["dataset"])]})
    return out.reset_index(drop=True)


def lambda_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per SDNet model that has fixed and adaptive rows: per (dataset, corruption, severity), the accuracy at the
    model's reference fixed lambda (the one evaluated on most cells; ties: the smallest), the best fixed lambda
    of a sweep, and each adaptive mode with its chosen lambda and its gain over the reference (points)."""
    rows = df[(df["attack"] == "none") & df["lambda_mode"].isin(["fixed", "adaptive-set", "adaptive-image"])]
    frames = []
    for model, sub in rows.groupby("model", sort=False):
        modes = set(sub["lambda_mode"])
        adaptive = [m for m in ("adaptive-set", "adaptive-image") if m in modes]
        if "fixed" not in modes or not adaptive:
            continue
        fixed = sub[sub["lambda_mode"] == "fixed"]
        counts = fixed.groupby("lambda").size()
        ref = float(min(counts[counts == counts.max()].index))
        key = ["dataset", "corruption", "severity"]
        ref_rows = fixed[fixed["lambda"] == ref].groupby(key).agg(n=("n", "first"), fixed=("accuracy", "first"))
        out = ref_rows.rename(columns={"fixed": "fixed_accuracy"})
        out["fixed_lambda"] = ref
        if fixed["lambda"].nunique() > 1:
            best = fixed.sort_values(["accuracy", "lambda"], ascending=[False, True]).groupby(key).first()
            out["best_fixed_accuracy"] = best["accuracy"]
            out["best_fixed_lambda"] = best["lambda"]
        for mode in adaptive:
            a = sub[sub["lambda_mode"] == mode].groupby(key).first()
            out[f"{mode}_accuracy"] = a["accuracy"]
            out[f"{mode}_lambda"] = a.apply(_lam, axis=1) if len(a) else []
            out[f"{mode}_gain"] = 100 * (out[f"{mode}_accuracy"] - out["fixed_accuracy"])
        out = out.reset_index()
        out.insert(0, "model", model)
        order = _corruption_order(out["corruption"])
        out = out.iloc[np.lexsort((out["severity"], [order.index(c) for c in out["corruption"]], out["dataset"]))]
        frames.append(out)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def warnings_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rows = _order(df[df["flags"].str.strip() != ""], order)
    return pd.DataFrame({"variant": rows["variant"], "dataset": rows["dataset"], "corruption": rows["corruption"],
                         "severity": rows["severity"], "attack": rows["attack"], "norm": rows["norm"],
                         "eps": rows["eps"], "flags": rows["flags"]}).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------- display

def _display(tid: str, t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """The numeric table as strings, with headers for readers (accuracies in %)."""
    if t.empty:
        return t
    if tid == "runs":
        return t.astype(str)
    if tid == "clean":
        d = pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"] + "/" + t["split"],
                          "n": t["n"].map(_num), "Top-1 (%)": t["accuracy"].map(_pct),
                          "95% CI (%)": [_ci(a, b) for a, b in zip(t["ci_low"], t["ci_high"])]})
        if t["top5_accuracy"].notna().any():
            d["Top-5 (%)"] = t["top5_accuracy"].map(_pct)
        if (t["lambda"] != "–").any():
            d["λ"] = t["lambda"]
        return d
    if tid == "corruption-summary":
        d = pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"], "Clean (%)": t["clean_accuracy"].map(_pct),
                          "Mean corruption acc. (%)": t["mean_corruption_accuracy"].map(_pct),
                          "95% CI (%, pooled)": [_ci(a, b) for a, b in zip(t["ci_low"], t["ci_high"])],
                          "Cells": t["corruption_cells"].map(_num)})
        if baseline is not None:
            d[f"mCE vs {baseline} (%)"] = t["mCE"].map(lambda v: _pct(v, 1))
            d["mCE over (corruptions)"] = t["mCE_corruptions"].map(_num)
            d["Relative mCE (%)"] = t["relative_mCE"].map(lambda v: _pct(v, 1))
            d["Relative mCE over (corruptions)"] = t["relative_mCE_corruptions"].map(_num)
        return d
    if tid == "per-corruption":
        d = t.copy()
        for c in d.columns[2:]:
            d[c] = d[c].map(lambda v: _pct(v, 1))
        return d.rename(columns={"dataset": "Dataset", "corruption": "Corruption"})
    if tid == "robust":
        d = pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"]})
        if (t["corruption"] != "none").any():
            d["Corruption"] = [c if c == "none" else f"{c} s{s}" for c, s in zip(t["corruption"], t["severity"])]
        d["Attack"] = t["attack"]
        if (t["source"] != "").any():
            d["Crafted on"] = t["source"].replace("", "(white-box)")
        d["Norm"], d["eps"] = t["norm"], [format_eps(e, nm) for e, nm in zip(t["eps"], t["norm"])]
        d["Steps"], d["Queries"] = t["steps"].map(_num), t["queries"].map(_num)
        d["Restarts"], d["n"] = t["restarts"].map(_num), t["n"].map(_num)
        d["Robust acc. (%)"] = t["accuracy"].map(_pct)
        d["95% CI (%)"] = [_ci(a, b) for a, b in zip(t["ci_low"], t["ci_high"])]
        d["Clean (%)"] = t["clean_accuracy"].map(_pct)
        return d
    if tid == "lambda":
        d = pd.DataFrame({"Model": t["model"], "Dataset": t["dataset"],
                          "Corruption": t["corruption"].replace("none", "clean"),
                          "Severity": t["severity"].map(_num), "n": t["n"].map(_num),
                          "Fixed λ": t["fixed_lambda"].map(lambda v: f"{v:.3g}"),
                          "Fixed (%)": t["fixed_accuracy"].map(_pct)})
        if "best_fixed_accuracy" in t:
            d["Best fixed (%)"] = t["best_fixed_accuracy"].map(_pct)
            d["Best fixed λ"] = t["best_fixed_lambda"].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}")
        for mode in ("adaptive-set", "adaptive-image"):
            if f"{mode}_accuracy" in t:
                d[f"{mode} (%)"] = t[f"{mode}_accuracy"].map(_pct)
                d[f"{mode} λ"] = t[f"{mode}_lambda"].fillna("–")
                d[f"{mode} gain (pts)"] = t[f"{mode}_gain"].map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}")
        return d
    if tid == "warnings":
        return pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"],
                             "Corruption": [c if c == "none" else f"{c} s{s}"
                                            for c, s in zip(t["corruption"], t["severity"])],
                             "Attack": t["attack"], "eps": [format_eps(e, nm) for e, nm in zip(t["eps"], t["norm"])],
                             "Flags": t["flags"].str.replace(";", ", ")})
    raise KeyError(tid)


NOTES = {
    "runs": "",
    "clean": "Top-1 accuracy on the clean test images with its 95% Wilson interval.",
    "corruption-summary": "Unweighted mean over the benchmark corruptions' (corruption, severity) cells; the "
                          "interval pools the cells' counts (they share images, so it is indicative). mCE: "
                          "Hendrycks & Dietterich's corruption error normalized by the baseline's, in %.",
    "per-corruption": "Accuracy (%) per corruption, averaged over the severities evaluated.",
    "robust": "Rows with an attack; 'Clean' is the variant's clean accuracy on the same dataset.",
    "lambda": "SDNet models evaluated both at a fixed lambda and with Algorithm 1's adaptive lambda; gain = "
              "adaptive minus fixed accuracy, in points.",
    "warnings": "Rows whose evaluation raised a warning flag.",
}
EMPTY = {
    "runs": "No runs.",
    "clean": "No clean rows in these runs.",
    "corruption-summary": "No benchmark-corruption rows in these runs.",
    "per-corruption": "No corruption rows in these runs.",
    "robust": "No attacked rows in these runs.",
    "lambda": "No SDNet model has both fixed and adaptive lambda rows in these runs.",
    "warnings": "No row carries a warning flag.",
}


# ----------------------------------------------------------------------------------------------------- figures

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]


def _series(ax, x, rows: pd.DataFrame, *, color, label: str, linestyle: str = "-", marker: str = "o") -> None:
    acc = 100 * rows["accuracy"].to_numpy(dtype=float)
    lo = np.nan_to_num(acc - 100 * rows["ci_low"].to_numpy(dtype=float), nan=0.0).clip(min=0)
    hi = np.nan_to_num(100 * rows["ci_high"].to_numpy(dtype=float) - acc, nan=0.0).clip(min=0)
    ax.errorbar(x, acc, yerr=[lo, hi], color=color, label=label, linestyle=linestyle, marker=marker, markersize=4,
                capsize=2.5, linewidth=1.5, elinewidth=1, alpha=0.9)


def _style(colors: dict[str, Any], variant: str) -> tuple[Any, str, float]:
    """Colour, marker and a small x offset (so that identical curves stay visible) of a variant."""
    keys = list(colors)
    i = keys.index(variant)
    return colors[variant], MARKERS[i % len(MARKERS)], (i - (len(keys) - 1) / 2) * min(0.06, 0.3 / len(keys))


def _legend(fig, axes, ncol: int) -> None:
    """One legend for the figure, below the panels (outside, so that it hides no data)."""
    handles: dict[str, Any] = {}
    for ax in np.atleast_1d(axes).ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center", ncol=max(1, ncol),
                   fontsize=8, frameon=False)


def _grid(n: int, ncols: int = 5) -> tuple[int, int]:
    ncols = min(n, ncols)
    return math.ceil(n / ncols), ncols


def severity_figure(df: pd.DataFrame, colors: dict[str, Any], stem: Path, title: str = "") -> list[Path]:
    """Accuracy versus severity, a panel per corruption, a line per variant (severity 0: clean), Wilson CIs."""
    rows = df[df["attack"] == "none"]
    corr = rows[rows["corruption"] != "none"]
    if corr.empty:
        return []
    names = _corruption_order(corr["corruption"])
    nrows, ncols = _grid(len(names))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols + 0.6, 2.4 * nrows + 1.2), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    clean = rows[rows["corruption"] == "none"]
    for ax, name in zip(axes.ravel(), names):
        for v in colors:
            part = pd.concat([clean[clean["variant"] == v].head(1),
                              corr[(corr["corruption"] == name) & (corr["variant"] == v)].sort_values("severity")])
            if part["corruption"].eq(name).any():
                color, marker, dx = _style(colors, v)
                _series(ax, part["severity"].to_numpy(dtype=float) + dx, part, color=color, label=v, marker=marker)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylim(-3, 103)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for j in range(ncols):
        bottom = axes[min(nrows - 1, (len(names) - 1 - j) // ncols), j]
        bottom.set_xlabel("severity (0 = clean)")
        bottom.xaxis.set_tick_params(labelbottom=True)
        bottom.set_xticks(range(6))
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    fig.suptitle(title or "Accuracy versus corruption severity", fontsize=11)
    _legend(fig, axes, ncol=min(len(colors), 4))
    return save(fig, stem)


def mean_corruption_figure(summary: pd.DataFrame, colors: dict[str, Any], stem: Path, title: str = "") -> list[Path]:
    """Mean corruption accuracy per variant (horizontal bars, pooled Wilson CI) with the clean accuracy as a
    marker."""
    if summary.empty:
        return []
    s = summary.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.45 * len(s)), layout="constrained")
    y = np.arange(len(s))[::-1]
    acc = 100 * s["mean_corruption_accuracy"].to_numpy(dtype=float)
    err = [np.nan_to_num(acc - 100 * s["ci_low"].to_numpy(dtype=float)).clip(min=0),
           np.nan_to_num(100 * s["ci_high"].to_numpy(dtype=float) - acc).clip(min=0)]
    ax.barh(y, acc, xerr=err, capsize=3, color=[colors.get(v, "0.5") for v in s["variant"]], edgecolor="black",
            linewidth=0.6, height=0.7, label="mean corruption accuracy (95% CI)")
    ax.scatter(100 * s["clean_accuracy"].to_numpy(dtype=float), y, marker="D", facecolor="white",
               edgecolor="black", zorder=3, label="clean accuracy")
    for yi, a in zip(y, acc):
        if math.isfinite(a):
            ax.text(1.5, yi, f"{a:.1f}%", ha="left", va="center", fontsize=8, color="white", fontweight="bold")
    labels = s["variant"] if s["dataset"].nunique() == 1 else s["variant"] + " · " + s["dataset"]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("accuracy (%)")
    ax.set_xlim(0, 102)
    ax.set_title(title or "Mean corruption accuracy per variant", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return save(fig, stem)


def robust_figure(df: pd.DataFrame, colors: dict[str, Any], stem: Path, title: str = "") -> list[Path]:
    """Robust accuracy versus eps, a panel per (attack, norm) on clean images, a line per variant (dashed:
    transfer from another model), eps 0 = the clean accuracy, Wilson CIs."""
    att = df[(df["attack"] != "none") & (df["corruption"] == "none") & df["eps"].notna()]
    if att.empty:
        return []
    clean = df[(df["attack"] == "none") & (df["corruption"] == "none")]
    panels = list(att.groupby(["attack", "norm"], sort=True).groups)
    nrows, ncols = _grid(len(panels), 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.3 * nrows + 1.0), squeeze=False,
                             layout="constrained")
    for ax, (attack, norm) in zip(axes.ravel(), panels):
        part = att[(att["attack"] == attack) & (att["norm"] == norm)]
        eps_values = sorted(set(part["eps"]) | {0.0})
        span = max(eps_values) or 1.0
        for v in colors:
            color, marker, dx = _style(colors, v)
            for source, rows in part[part["variant"] == v].groupby("attack_source", sort=True):
                rows = pd.concat([clean[clean["variant"] == v].head(1).assign(eps=0.0), rows]).sort_values("eps")
                label = v if not source else f"{v} (transfer from {source})"
                _series(ax, rows["eps"].to_numpy(dtype=float) + dx * span / 5, rows, color=color, label=label,
                        linestyle="--" if source else "-", marker=marker)
        ax.set_xticks(eps_values, [format_eps(e, norm) if e else "0" for e in eps_values], fontsize=7,
                      rotation=45 if len(eps_values) > 5 else 0)
        ax.set_xlabel(f"eps ({norm}, pixels in [0, 1])")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"{attack} ({norm})", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or "Robust accuracy versus eps", fontsize=11)
    n_labels = len({lab for ax in axes.ravel() for lab in ax.get_legend_handles_labels()[1]})
    _legend(fig, axes, ncol=min(n_labels, 3))
    return save(fig, stem)


def lambda_sweep_figure(df: pd.DataFrame, model: str, stem: Path) -> list[Path]:
    """Heatmap lambda x (corruption, severity) -> accuracy for one model with several fixed lambdas; adaptive
    rows (when present) below a line for comparison."""
    rows = df[(df["model"] == model) & (df["attack"] == "none")]
    fixed = rows[rows["lambda_mode"] == "fixed"]
    if fixed["lambda"].nunique() < 2:
        return []
    cells = fixed[["corruption", "severity"]].drop_duplicates()
    order = _corruption_order(cells["corruption"])
    cells = cells.iloc[np.lexsort((cells["severity"], [order.index(c) for c in cells["corruption"]]))]
    cols = list(zip(cells["corruption"], cells["severity"]))
    lambdas = sorted(fixed["lambda"].unique())
    labels = [f"λ = {lam:.3g}" for lam in lambdas]
    grid = [[_acc(fixed[fixed["lambda"] == lam], c, s) for c, s in cols] for lam in lambdas]
    adaptive = [m for m in ("adaptive-set", "adaptive-image") if m in set(rows["lambda_mode"])]
    for mode in adaptive:
        grid.append([_acc(rows[rows["lambda_mode"] == mode], c, s) for c, s in cols])
        labels.append(mode)
    data = 100 * np.array(grid, dtype=float)
    fig, ax = plt.subplots(figsize=(min(3 + 0.3 * len(cols), 30), 2.2 + 0.3 * len(labels)), layout="constrained")
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="accuracy (%)", fraction=0.05, pad=0.01, aspect=10)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(len(cols)), ["clean" if c == "none" else f"{c.replace('_', ' ')} {s}" for c, s in cols],
                  rotation=90, fontsize=6)
    if adaptive:
        ax.axhline(len(lambdas) - 0.5, color="white", linewidth=2)
    if data.size <= 400:
        for (i, j), v in np.ndenumerate(data):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7 if data.size <= 120 else 5,
                        color="white" if v < 60 else "black")
    ax.set_xlabel("corruption and severity")
    ax.set_ylabel("lambda (CSC layer)")
    ax.set_title(f"Lambda sweep of {model}: accuracy per cell")
    return save(fig, stem)


def _acc(rows: pd.DataFrame, corruption: str, severity: int) -> float:
    hit = rows[(rows["corruption"] == corruption) & (rows["severity"] == severity)]
    return float(hit["accuracy"].iloc[0]) if len(hit) else math.nan


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


# ------------------------------------------------------------------------------------------------- rendering

def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(d: pd.DataFrame) -> str:
    head = [_md_cell(c) for c in d.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in d.astype(str).itertuples(index=False)]
    return "\n".join(lines)


def html_table(d: pd.DataFrame, tid: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                     for row in d.astype(str).itertuples(index=False))
    return f'<table id="table-{tid}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
.note { color: #555; font-size: 13px; }
.empty { color: #888; font-style: italic; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.scroll { overflow-x: auto; }
ul.warn li { color: #8a4b00; }
"""


@dataclass
class _Figure:
    fid: str
    title: str
    caption: str
    paths: list[Path]

    @property
    def png(self) -> Path:
        return next(p for p in self.paths if p.suffix == ".png")


def build_report(run_dirs: list[Path], out: Path, *, baseline: str | None = None) -> ReportFiles:
    """Read the run directories (results.csv, manifest.json, calibration.json when present) and write into `out`
    report.md, report.html (self-contained) and figures/*.png|svg. `baseline` names the variant (a label of
    `robustlab.reports.metrics.variants`, or a model name with a single variant) that mCE is normalized by."""
    df, runs, warnings = load_runs(run_dirs)
    order = list(dict.fromkeys(df["variant"]))
    if baseline is not None and baseline not in order:
        matches = list(dict.fromkeys(df.loc[df["model"] == baseline, "variant"]))
        if len(matches) != 1:
            raise RobustlabError(f"baseline {baseline!r} is not a model variant of these runs; variants: "
                                 f"{', '.join(order)}")
        baseline = matches[0]
    colors = variant_colors(order)
    out = Path(out)
    fig_dir = out / "figures"
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobustlabError(f"cannot create report directory {out} ({e.strerror}); pass a writable --out") from None

    tables = {"runs": runs_table(runs), "clean": clean_table(df, order),
              "corruption-summary": summary_table(df, order, baseline),
              "per-corruption": per_corruption_table(df, order), "robust": robust_table(df, order),
              "lambda": lambda_table(df), "warnings": warnings_table(df, order)}

    figures: list[_Figure] = []
    datasets = list(dict.fromkeys(df["dataset"]))
    for ds in datasets:
        sub = df[df["dataset"] == ds]
        sfx = "" if len(datasets) == 1 else f"-{_slug(ds)}"
        on = "" if len(datasets) == 1 else f" ({ds})"
        figures.append(_Figure(f"severity{sfx}", f"Accuracy versus severity{on}",
                               "A panel per corruption, a line per model variant; severity 0 is the clean accuracy; "
                               "bars are 95% Wilson intervals.",
                               severity_figure(sub, colors, fig_dir / f"accuracy-vs-severity{sfx}",
                                               title=f"Accuracy versus corruption severity{on}")))
        summ = tables["corruption-summary"]
        figures.append(_Figure(f"mean-corruption{sfx}", f"Mean corruption accuracy{on}",
                               "Bars: mean accuracy over the benchmark corruption cells (pooled 95% Wilson interval); "
                               "diamonds: clean accuracy.",
                               mean_corruption_figure(summ[summ["dataset"] == ds] if len(summ) else summ, colors,
                                                      fig_dir / f"mean-corruption-accuracy{sfx}",
                                                      title=f"Mean corruption accuracy per variant{on}")))
        figures.append(_Figure(f"robust{sfx}", f"Robust accuracy versus eps{on}",
                               "A panel per attack, a line per variant (dashed: transferred from the named model); "
                               "eps 0 is the clean accuracy; bars are 95% Wilson intervals.",
                               robust_figure(sub, colors, fig_dir / f"robust-accuracy-vs-eps{sfx}",
                                             title=f"Robust accuracy versus eps{on}")))
    for run in runs:
        if run.calibration is not None:
            sfx = "" if len(runs) == 1 else f"-{_slug(run.name)}"
            c = run.calibration
            figures.append(_Figure(f"lambda-residual{sfx}", f"Algorithm 1 calibration ({run.name})",
                                   f"Lambda-residual fit of {c.arch} on {c.noise} noise ({c.calibration_split}, "
                                   f"{c.n} images): lambda = {c.fit.a:.3g} r + {c.fit.b:.3g}.",
                                   lambda_residual_figure(c, fig_dir / f"lambda-residual{sfx}")))
    for model in dict.fromkeys(df["model"]):
        figures.append(_Figure(f"lambda-sweep-{_slug(model)}", f"Lambda sweep: {model}",
                               "Accuracy per fixed lambda (rows) and corruption/severity cell (columns); adaptive "
                               "lambda rows below the white line.",
                               lambda_sweep_figure(df, model, fig_dir / f"lambda-sweep-{_slug(model)}")))
    figures = [f for f in figures if f.paths]

    displays = {tid: _display(tid, t, baseline) for tid, t in tables.items()}
    flag_names = sorted({f for s in df["flags"] for f in s.split(";") if f.strip()})
    title = "robustlab report"
    sources = ", ".join(r.name for r in runs)

    md = [f"# {title}", "", f"Runs: {sources}. Variants: {', '.join(order)}."
          + (f" mCE baseline: {baseline}." if baseline else ""), ""]
    if warnings:
        md += ["**Notes:**", *[f"- {w}" for w in warnings], ""]
    for tid, heading in TABLES.items():
        md += [f"## {heading}", ""]
        if NOTES[tid]:
            md += [NOTES[tid], ""]
        md += [markdown_table(displays[tid]) if not displays[tid].empty else f"*{EMPTY[tid]}*", ""]
        if tid == "warnings" and flag_names:
            md += [f"- `{f}`: {FLAG_MEANINGS.get(f, 'see the run log')}" for f in flag_names] + [""]
    md += ["## Figures", ""]
    for f in figures:
        md += [f"### {f.title}", "", f"![{f.title}](figures/{f.png.name})", "", f.caption,
               f"([SVG](figures/{f.png.with_suffix('.svg').name}))", ""]
    if not figures:
        md += ["*No figure: the runs hold no corruption, attack, sweep or calibration data.*", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
         f"<p>Runs: {html.escape(sources)}. Variants: {html.escape(', '.join(order))}."
         + (f" mCE baseline: <b>{html.escape(baseline)}</b>." if baseline else "") + "</p>"]
    if warnings:
        h += ['<ul class="warn">', *[f"<li>{html.escape(w)}</li>" for w in warnings], "</ul>"]
    h += ["<nav><b>Contents:</b> " + " · ".join(f'<a href="#{tid}">{html.escape(t)}</a>' for tid, t in TABLES.items())
          + ' · <a href="#figures">Figures</a></nav>']
    for tid, heading in TABLES.items():
        h.append(f'<h2 id="{tid}">{html.escape(heading)}</h2>')
        if NOTES[tid]:
            h.append(f'<p class="note">{html.escape(NOTES[tid])}</p>')
        h.append(f'<div class="scroll">{html_table(displays[tid], tid)}</div>' if not displays[tid].empty
                 else f'<p class="empty" id="table-{tid}">{html.escape(EMPTY[tid])}</p>')
        if tid == "warnings" and flag_names:
            h += ["<ul>", *[f"<li><code>{html.escape(f)}</code>: {html.escape(FLAG_MEANINGS.get(f, 'see the run log'))}"
                            "</li>" for f in flag_names], "</ul>"]
    h.append('<h2 id="figures">Figures</h2>')
    for f in figures:
        data = base64.b64encode(f.png.read_bytes()).decode("ascii")
        h.append(f'<figure id="figure-{html.escape(f.fid)}"><h3>{html.escape(f.title)}</h3>'
                 f'<img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">'
                 f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    if not figures:
        h.append('<p class="empty">No figure: the runs hold no corruption, attack, sweep or calibration data.</p>')
    h.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(h), encoding="utf-8")
    return ReportFiles(md_path, html_path, [p for f in figures for p in f.paths], tables, warnings)
