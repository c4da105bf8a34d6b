"""Statistics over per-image outcomes: robust accuracy under the worst case of every attack, paired differences
between variants evaluated on the same images (exact McNemar test, Holm adjustment, paired bootstrap intervals) and
bootstrap intervals over images for mean corruption accuracy.

Rows are paired only when their outcome files say they saw the same image set (the `image_set` fingerprint);
rows without outcomes (runs of robustlab before schema 4) give no such figure, and the tables say why."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from robustlab.corruptions.tables import BENCHMARK
from robustlab.outcomes import Outcomes
from robustlab.schema import NONE, wilson_interval

NEEDS_OUTCOMES = "needs outcomes (a run of robustlab before schema 4)"
OTHER_IMAGES = "not paired: evaluated on different image sets"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

Loader = Callable[[pd.Series], "Outcomes | None"]  # a row's outcomes, None where its run stored none


def attack_label(row: pd.Series) -> str:
    """An attack row's name in lists of attacks: the attack, and its source for a transfer."""
    return f"{row['attack']} from {row['attack_source']}" if row.get("attack_source") else str(row["attack"])


def _same_images(outcomes: Sequence[Outcomes], rows: pd.DataFrame) -> bool:
    sets = set(rows["image_set"]) if "image_set" in rows else {""}
    return len(sets) == 1 and "" not in sets and all(np.array_equal(o.index, outcomes[0].index) for o in outcomes)


def worst_case(df: pd.DataFrame, load: Loader) -> pd.DataFrame:
    """Per variant, dataset and threat model (norm, eps): the fraction of images that are clean-correct and
    survive every attack run on them, its Wilson interval and the attacks it covers; `status` says why a figure
    is missing (no outcomes, or attacks on different images)."""
    attacked = df[(df["attack"] != NONE) & (df["corruption"] == NONE)]
    rows = []
    for (variant, dataset, norm, eps), group in attacked.groupby(["variant", "dataset", "norm", "eps"], sort=True):
        attacks = sorted(attack_label(r) for _, r in group.iterrows())
        row = {"variant": variant, "dataset": dataset, "norm": norm, "eps": eps, "attacks": ", ".join(attacks),
               "n": math.nan, "robust": math.nan, "accuracy": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "best_single": float(group["accuracy"].min()), "status": ""}
        outcomes = [load(r) for _, r in group.iterrows()]
        if any(o is None for o in outcomes):
            row["status"] = NEEDS_OUTCOMES
        elif not _same_images(outcomes, group):
            row["status"] = OTHER_IMAGES
        else:
            robust = np.logical_and.reduce([o.ok for o in outcomes])
            n, k = len(robust), int(robust.sum())
            lo, hi = wilson_interval(k, n)
            row.update(n=n, robust=k, accuracy=k / n if n else math.nan, ci_low=lo, ci_high=hi)
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", "dataset", "norm", "eps", "attacks", "n", "robust", "accuracy",
                                       "ci_low", "ci_high", "best_single", "status"])


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar test: of the discordant images, are the two directions equally likely?"""
    discordant = a_only + b_only
    return 1.0 if discordant == 0 else float(scipy.stats.binomtest(a_only, discordant, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error) of p-values, in their given order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def bootstrap_mean(outcomes: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean of a per-image matrix (images x cells, or a vector) and its 95% percentile bootstrap interval over
    images: images are resampled jointly across cells, so cells of the same images keep their correlation (the
    mean over cells is linear, so resampling each image's own mean over cells is the same)."""
    values = np.asarray(outcomes, dtype=np.float64)
    per_image = values.mean(axis=1) if values.ndim == 2 else values
    estimate = float(per_image.mean())
    if len(per_image) < 2 or np.ptp(per_image) == 0:
        return Interval(estimate, estimate, estimate)
    result = scipy.stats.bootstrap((per_image,), np.mean, n_resamples=resamples, confidence_level=0.95,
                                   method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


def corruption_outcomes(df: pd.DataFrame, variant: str, load: Loader) -> tuple[np.ndarray, str] | str:
    """The images x cells matrix of a variant's benchmark corruption cells (ordered by corruption and severity)
    and the image set they share, or why there is none."""
    rows = df[(df["variant"] == variant) & (df["attack"] == NONE) & df["corruption"].isin(BENCHMARK)]
    rows = rows.sort_values(["corruption", "severity"])
    if rows.empty:
        return "no corruption cells"
    outcomes = [load(r) for _, r in rows.iterrows()]
    if any(o is None for o in outcomes):
        return NEEDS_OUTCOMES
    if not _same_images(outcomes, rows):
        return OTHER_IMAGES
    return np.stack([o.ok for o in outcomes], axis=1), str(rows["image_set"].iloc[0])


@dataclass(frozen=True)
class Difference:
    """Variant a minus variant b on one cell or aggregate, in accuracy (fractions), with a paired interval."""
    what: str
    a: str
    b: str
    n: int
    difference: Interval
    p_value: float  # exact McNemar for a cell; NaN for an aggregate (its interval decides)
    p_holm: float


def paired_cells(df: pd.DataFrame, a: str, b: str, load: Loader) -> list[Difference] | str:
    """Per cell (clean, corruption at a severity, attack at an eps) that both variants ran on the same images: the
    difference a - b with a paired bootstrap interval and the exact McNemar p, Holm-adjusted over the cells."""
    key = ["corruption", "severity", "attack", "attack_source", "norm", "eps"]
    rows_a, rows_b = df[df["variant"] == a], df[df["variant"] == b]
    merged = rows_a.reset_index().merge(rows_b.reset_index(), on=key, suffixes=("_a", "_b"))
    found: list[tuple[str, np.ndarray, np.ndarray]] = []
    missing = False
    for _, m in merged.iterrows():
        ra, rb = df.loc[m["index_a"]], df.loc[m["index_b"]]
        oa, ob = load(ra), load(rb)
        if oa is None or ob is None:
            missing = True
            continue
        if ra["image_set"] != rb["image_set"] or not np.array_equal(oa.index, ob.index):
            return OTHER_IMAGES
        found.append((_cell_name(ra), oa.ok, ob.ok))
    if not found:
        return NEEDS_OUTCOMES if missing else "no common cells"
    p = [mcnemar_p(int((x & ~y).sum()), int((~x & y).sum())) for _, x, y in found]
    adjusted = holm(p)
    return [Difference(name, a, b, len(x), bootstrap_mean(x.astype(float) - y.astype(float)), pv, ph)
            for (name, x, y), pv, ph in zip(found, p, adjusted)]


def _cell_name(row: pd.Series) -> str:
    if row["attack"] != NONE:
        return f"{attack_label(row)} {row['norm']} eps {row['eps']:.4g}"
    return "clean" if row["corruption"] == NONE else f"{row['corruption']} {int(row['severity'])}"


def verdict(d: Difference, *, alpha: float = 0.05) -> str:
    """Plain words: 'a vs b: -0.28 points (95% CI -1.1..0.5), not significant'."""
    ci = d.difference
    decided = (d.p_holm < alpha) if not math.isnan(d.p_holm) else (ci.low > 0 or ci.high < 0)
    return (f"{d.a} vs {d.b}: {100 * ci.estimate:+.2f} points (95% CI {100 * ci.low:+.2f}..{100 * ci.high:+.2f}), "
            f"{'significant' if decided else 'not significant'}")
