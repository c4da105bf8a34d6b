"""Tables: the records a command prints, and the report's tables, each declared once (heading, note, what it says
when empty, how it is built from the runs, how it is shown)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from robustlab.corruptions.parameters import BENCHMARK
from robustlab.reports.metrics import corruption_summary, reference_lambda
from robustlab.reports.paired import (
    BOOTSTRAP_RESAMPLES,
    CellOutcomes,
    Loader,
    cell_differences_table,
    corruption_outcomes,
    default_pairs,
    differences_table,
    mce_intervals,
    mean_accuracy_interval,
    worst_case,
)
from robustlab.reports.runs import Run
from robustlab.reports.style import ci, corruption_order, format_eps, in_order, lambda_text, num, pct
from robustlab.schema import Record, wilson_interval


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}"


def _attack(r: Record) -> str:
    """The attack, its eps and, for a transfer, the model it was crafted on."""
    if r.attack == "none":
        return "none"
    return f"{r.attack} eps {r.eps:.4g}" + (f" from {r.attack_source}" if r.attack_source else "")


def records_table(records: Sequence[Record]) -> str:
    """One line per record: model, condition, n, top-1 % with its 95% interval, top-5 %."""
    header = ["model", "dataset", "corruption", "sev", "attack", "lambda mode", "lambda", "n", "top-1 %", "95% CI",
              "top-5 %"]
    rows = [[r.model, r.dataset, r.corruption, str(r.severity), _attack(r), r.lambda_mode,
             "-" if math.isnan(r.lmbda) else f"{r.lmbda:.3g}", str(r.n), _pct(r.accuracy),
             f"{_pct(r.ci_low)}-{_pct(r.ci_high)}", _pct(r.top5_accuracy)] for r in records]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReportData:
    """What every report table is built from: all rows, the runs, the variant order, the mCE baseline and the
    rows' per-image outcomes."""
    df: pd.DataFrame
    runs: list[Run]
    order: list[str]
    baseline: str | None
    outcomes: Loader


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
    rows = in_order(df[(df["corruption"] == "none") & (df["attack"] == "none")], order)
    out = pd.DataFrame({"variant": rows["variant"], "dataset": rows["dataset"], "split": rows["split"],
                        "n": rows["n"], "accuracy": rows["accuracy"], "ci_low": rows["ci_low"],
                        "ci_high": rows["ci_high"], "top5_accuracy": rows["top5_accuracy"],
                        "lambda": rows.apply(lambda_text, axis=1) if len(rows) else []})
    return out.reset_index(drop=True)


def pooled_wilson(rows: pd.DataFrame) -> tuple[float, float]:
    """Wilson 95% interval on the pooled counts of several cells (the cells share images, so it is indicative)."""
    return wilson_interval(int(rows["correct"].sum()), int(rows["n"].sum()))


def summary_table(df: pd.DataFrame, order: list[str], baseline: str | None, load: Loader) -> pd.DataFrame:
    """corruption_summary per dataset (variants with benchmark-corruption cells only), with bootstrap intervals
    over images where the rows carry outcomes (`ci_method` says which; else the pooled Wilson interval)."""
    frames = []
    for dataset, sub in df.groupby("dataset", sort=False):
        base = baseline if baseline is not None and baseline in set(sub["variant"]) else None
        s = corruption_summary(sub.drop(columns="variant"), baseline=base)
        s = s[s["corruption_cells"] > 0].rename(columns={"model": "variant"})
        if s.empty:
            continue
        base_cells = corruption_outcomes(sub, base, load) if base is not None else None
        intervals = [_summary_intervals(sub, v, base_cells, load) for v in s["variant"]]
        s.insert(1, "dataset", dataset)
        for column in intervals[0]:
            s[column] = [i[column] for i in intervals]
        if base is None:
            s["mCE"], s["relative_mCE"] = math.nan, math.nan
            s["mCE_corruptions"], s["relative_mCE_corruptions"] = 0, 0
        frames.append(in_order(s, order))
    cols = ["variant", "dataset", "clean_accuracy", "mean_corruption_accuracy", "ci_low", "ci_high", "ci_method",
            "corruption_cells", "mCE", "mCE_low", "mCE_high", "mCE_corruptions", "relative_mCE", "relative_mCE_low",
            "relative_mCE_high", "relative_mCE_corruptions"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _summary_intervals(sub: pd.DataFrame, variant: str, base: CellOutcomes | str | None,
                       load: Loader) -> dict[str, float | str]:
    """A variant's intervals: mean corruption accuracy (bootstrap over images, else pooled), mCE and relative mCE
    (bootstrap over images where the variant and the baseline carry outcomes of the same images)."""
    out: dict[str, float | str] = {"mCE_low": math.nan, "mCE_high": math.nan, "relative_mCE_low": math.nan,
                                   "relative_mCE_high": math.nan}
    cells = corruption_outcomes(sub, variant, load)
    if isinstance(cells, CellOutcomes):
        mean = mean_accuracy_interval(cells)
        out.update(ci_low=mean.low, ci_high=mean.high, ci_method="bootstrap")
        if isinstance(base, CellOutcomes):
            found = mce_intervals(cells, base)
            if not isinstance(found, str):
                out.update(mCE_low=found[0].low, mCE_high=found[0].high, relative_mCE_low=found[1].low,
                           relative_mCE_high=found[1].high)
    else:
        rows = sub[(sub["variant"] == variant) & (sub["attack"] == "none") & sub["corruption"].isin(BENCHMARK)]
        lo, hi = pooled_wilson(rows)
        out.update(ci_low=lo, ci_high=hi, ci_method=f"pooled: {cells}")
    return out


def worst_case_table(df: pd.DataFrame, order: list[str], load: Loader) -> pd.DataFrame:
    return in_order(worst_case(df, load), order).reset_index(drop=True)


def per_corruption_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rows = df[(df["corruption"] != "none") & (df["attack"] == "none")]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index=["dataset", "corruption"], columns="variant", values="accuracy", aggfunc="mean")
    table = table[[v for v in order if v in table.columns]]
    keys = sorted(table.index, key=lambda k: (k[0], corruption_order(rows["corruption"]).index(k[1])))
    return table.loc[keys].reset_index()


def robust_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rows = df[df["attack"] != "none"]
    if rows.empty:
        return pd.DataFrame()
    clean = df[(df["corruption"] == "none") & (df["attack"] == "none")].groupby(["variant", "dataset"])["accuracy"]
    clean = clean.first()
    rows = rows.sort_values(["dataset", "attack", "norm", "attack_source", "corruption", "severity", "eps"],
                            kind="stable")
    rows = in_order(rows, order)
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
        ref = reference_lambda(fixed)
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
            out[f"{mode}_lambda"] = a.apply(lambda_text, axis=1) if len(a) else []
            out[f"{mode}_gain"] = 100 * (out[f"{mode}_accuracy"] - out["fixed_accuracy"])
        out = out.reset_index()
        out.insert(0, "model", model)
        order = corruption_order(out["corruption"])
        out = out.iloc[np.lexsort((out["severity"], [order.index(c) for c in out["corruption"]], out["dataset"]))]
        frames.append(out)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def warnings_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rows = in_order(df[df["flags"].str.strip() != ""], order)
    return pd.DataFrame({"variant": rows["variant"], "dataset": rows["dataset"], "corruption": rows["corruption"],
                         "severity": rows["severity"], "attack": rows["attack"], "source": rows["attack_source"],
                         "norm": rows["norm"], "eps": rows["eps"], "flags": rows["flags"],
                         "about": rows["flags_model"]}).reset_index(drop=True)


def show_runs(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    return t.astype(str)


def show_clean(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    d = pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"] + "/" + t["split"],
                      "n": t["n"].map(num), "Top-1 (%)": t["accuracy"].map(pct),
                      "95% CI (%)": [ci(a, b) for a, b in zip(t["ci_low"], t["ci_high"])]})
    if t["top5_accuracy"].notna().any():
        d["Top-5 (%)"] = t["top5_accuracy"].map(pct)
    if (t["lambda"] != "–").any():
        d["λ"] = t["lambda"]
    return d


def show_summary(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    d = pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"], "Clean (%)": t["clean_accuracy"].map(pct),
                      "Mean corruption acc. (%)": t["mean_corruption_accuracy"].map(pct),
                      "95% CI (%)": [ci(a, b) for a, b in zip(t["ci_low"], t["ci_high"])],
                      "CI method": t["ci_method"], "Cells": t["corruption_cells"].map(num)})
    if baseline is not None:
        d[f"mCE vs {baseline} (%)"] = t["mCE"].map(lambda v: pct(v, 1))
        d["mCE 95% CI (%)"] = [ci(a, b) for a, b in zip(t["mCE_low"], t["mCE_high"])]
        d["mCE over (corruptions)"] = t["mCE_corruptions"].map(num)
        d["Relative mCE (%)"] = t["relative_mCE"].map(lambda v: pct(v, 1))
        d["Relative mCE over (corruptions)"] = t["relative_mCE_corruptions"].map(num)
    return d


def show_per_corruption(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    d = t.copy()
    for c in d.columns[2:]:
        d[c] = d[c].map(lambda v: pct(v, 1))
    return d.rename(columns={"dataset": "Dataset", "corruption": "Corruption"})


def show_robust(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    d = pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"]})
    if (t["corruption"] != "none").any():
        d["Corruption"] = [c if c == "none" else f"{c} s{s}" for c, s in zip(t["corruption"], t["severity"])]
    d["Attack"] = t["attack"]
    if (t["source"] != "").any():
        d["Crafted on"] = t["source"].replace("", "(white-box)")
    d["Norm"], d["eps"] = t["norm"], [format_eps(e, nm) for e, nm in zip(t["eps"], t["norm"])]
    d["Steps"], d["Queries"] = t["steps"].map(num), t["queries"].map(num)
    d["Restarts"], d["n"] = t["restarts"].map(num), t["n"].map(num)
    d["Robust acc. (%)"] = t["accuracy"].map(pct)
    d["95% CI (%)"] = [ci(a, b) for a, b in zip(t["ci_low"], t["ci_high"])]
    d["Clean (%)"] = t["clean_accuracy"].map(pct)
    return d


def show_worst_case(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    return pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"], "Norm": t["norm"],
                         "eps": [format_eps(e, nm) for e, nm in zip(t["eps"], t["norm"])], "Attacks": t["attacks"],
                         "n": t["n"].map(num), "Worst case (%)": t["accuracy"].map(pct),
                         "95% CI (%)": [ci(a, b) for a, b in zip(t["ci_low"], t["ci_high"])],
                         "Best single attack (%)": t["best_single"].map(pct), "Note": t["status"]})


def _points(v: float) -> str:
    return "–" if pd.isna(v) else f"{100 * v:+.2f}"


def show_differences(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    return pd.DataFrame({"Variant": t["a"], "Against": t["b"], "Measure": t["what"], "n": t["n"].map(num),
                         "Difference (points)": t["difference"].map(_points),
                         "95% CI (points)": [f"{_points(a)}..{_points(b)}" if pd.notna(a) else "–"
                                             for a, b in zip(t["ci_low"], t["ci_high"])],
                         "In words": t["verdict"]})


def show_cells(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    return pd.DataFrame({"Variant": t["a"], "Against": t["b"], "Cell": t["cell"], "n": t["n"].map(num),
                         "Difference (points)": t["difference"].map(_points),
                         "95% CI (points)": [f"{_points(a)}..{_points(b)}" if pd.notna(a) else "–"
                                             for a, b in zip(t["ci_low"], t["ci_high"])],
                         "McNemar p": t["p"].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}"),
                         "Holm p": t["p_holm"].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}"),
                         "Verdict": t["status"]})


def show_lambda(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    d = pd.DataFrame({"Model": t["model"], "Dataset": t["dataset"],
                      "Corruption": t["corruption"].replace("none", "clean"),
                      "Severity": t["severity"].map(num), "n": t["n"].map(num),
                      "Fixed λ": t["fixed_lambda"].map(lambda v: f"{v:.3g}"),
                      "Fixed (%)": t["fixed_accuracy"].map(pct)})
    if "best_fixed_accuracy" in t:
        d["Best fixed (%)"] = t["best_fixed_accuracy"].map(pct)
        d["Best fixed λ"] = t["best_fixed_lambda"].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}")
    for mode in ("adaptive-set", "adaptive-image"):
        if f"{mode}_accuracy" in t:
            d[f"{mode} (%)"] = t[f"{mode}_accuracy"].map(pct)
            d[f"{mode} λ"] = t[f"{mode}_lambda"].fillna("–")
            d[f"{mode} gain (pts)"] = t[f"{mode}_gain"].map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}")
    return d


def show_warnings(t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    return pd.DataFrame({"Variant": t["variant"], "Dataset": t["dataset"],
                         "Corruption": [c if c == "none" else f"{c} s{s}"
                                        for c, s in zip(t["corruption"], t["severity"])],
                         "Attack": [a + (f" from {src}" if src else "") for a, src in zip(t["attack"], t["source"])],
                         "eps": [format_eps(e, nm) for e, nm in zip(t["eps"], t["norm"])],
                         "Flags": t["flags"].str.replace(";", ", "), "About": t["about"]})


@dataclass(frozen=True)
class Table:
    """One report table: its id (HTML anchor), heading, note, text when empty, builder and display."""
    id: str
    heading: str
    note: str
    empty: str
    build: Callable[[ReportData], pd.DataFrame]
    show: Callable[[pd.DataFrame, str | None], pd.DataFrame]

    def display(self, t: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
        """The numeric table as strings, with headers for readers (accuracies in %)."""
        return t if t.empty else self.show(t, baseline)


REPORT_TABLES: Sequence[Table] = (
    Table("runs", "Runs", "", "No runs.", lambda d: runs_table(d.runs), show_runs),
    Table("clean", "Clean accuracy", "Top-1 accuracy on the clean test images with its 95% Wilson interval.",
          "No clean rows in these runs.", lambda d: clean_table(d.df, d.order), show_clean),
    Table("corruption-summary", "Mean corruption accuracy and mCE",
          "Unweighted mean over the benchmark corruptions' (corruption, severity) cells. Intervals: 95% percentile "
          f"bootstrap over images ({BOOTSTRAP_RESAMPLES:,} resamples, seeded; an image is resampled with all its "
          "cells, and with the baseline's for mCE); a run without per-image outcomes gets the pooled Wilson "
          "interval instead (marked: it treats the cells' shared images as independent, so it is too narrow). "
          "mCE: Hendrycks & Dietterich's corruption error normalized by the baseline's, in %, over the corruptions "
          "where it is defined (counted).",
          "No benchmark-corruption rows in these runs.",
          lambda d: summary_table(d.df, d.order, d.baseline, d.outcomes), show_summary),
    Table("per-corruption", "Accuracy per corruption (mean over severities)",
          "Accuracy (%) per corruption, averaged over the severities evaluated.", "No corruption rows in these runs.",
          lambda d: per_corruption_table(d.df, d.order), show_per_corruption),
    Table("robust", "Robust accuracy per attack and eps",
          "Rows with an attack; 'Clean' is the variant's clean accuracy on the same dataset.",
          "No attacked rows in these runs.", lambda d: robust_table(d.df, d.order), show_robust),
    Table("worst-case", "Robust accuracy under every attack (worst case)",
          "Per variant and threat model: the images that are clean-correct and survive every attack run on them "
          "(AutoAttack's ensemble rule), with the 95% Wilson interval and the attacks it covers; it is never above "
          "the best single attack's figure.", "No attacked rows in these runs.",
          lambda d: worst_case_table(d.df, d.order, d.outcomes), show_worst_case),
    Table("differences", "Paired differences",
          "Each adaptive mode against the same model's fixed lambda, and every variant against the baseline (else "
          "the first variant), on the same images: the difference in points with a 95% paired bootstrap interval "
          "over images; a difference holds only when its interval excludes zero.",
          "No pair of variants to compare (a single variant).",
          lambda d: differences_table(d.df, default_pairs(d.df, d.baseline), d.outcomes), show_differences),
    Table("paired-cells", "Paired differences per cell",
          "Per cell both variants ran on the same images: the difference in points, its 95% paired bootstrap "
          "interval, the exact McNemar p-value and its Holm adjustment over the comparison's cells.",
          "No pair of variants to compare.",
          lambda d: cell_differences_table(d.df, default_pairs(d.df, d.baseline), d.outcomes), show_cells),
    Table("lambda", "Fixed versus adaptive lambda",
          "SDNet models evaluated both at a fixed lambda and with Algorithm 1's adaptive lambda; gain = adaptive "
          "minus fixed accuracy, in points.", "No SDNet model has both fixed and adaptive lambda rows in these runs.",
          lambda d: lambda_table(d.df), show_lambda),
    Table("warnings", "Warnings", "Rows whose evaluation raised a warning flag (about the model in 'About').",
          "No row carries a warning flag.", lambda d: warnings_table(d.df, d.order), show_warnings),
)
