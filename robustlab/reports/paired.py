"""Statistics over per-image outcomes: robust accuracy under the worst case of every attack, paired differences
between variants evaluated on the same images (exact McNemar test, Holm adjustment, paired bootstrap intervals) and
bootstrap intervals over images for mean corruption accuracy.

Rows are paired only when their outcome files say they saw the same image set (the `image_set` fingerprint);
rows without outcomes (runs of robustlab before schema 4) give no such figure, and the tables say why."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from robustlab.corruptions.parameters import BENCHMARK
from robustlab.outcomes import Outcomes
from robustlab.reports.metrics import reference_lambda
from robustlab.reports.style import format_eps
from robustlab.schema import NONE, wilson_interval

NEEDS_OUTCOMES = "needs outcomes (a run of robustlab before schema 4)"
OTHER_IMAGES = "not paired: evaluated on different image sets"
AMBIGUOUS = "not paired: a variant holds several rows of one cell (the same cell in several runs)"
# what makes two attack rows the same attack (beside the threat model): a worst case or a cell is compared between
# two variants only over attacks run on both with the same settings
ATTACK_SETTINGS = ["attack", "attack_source", "steps", "queries", "alpha", "restarts", "attack_config"]
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_BATCH = 100  # resamples drawn at a time: 2,000 x 10,000 image indices at once would take 160 MB

Loader = Callable[[pd.Series], "Outcomes | None"]  # a row's outcomes, None where its run stored none


def attack_label(row: pd.Series) -> str:
    """An attack row's name in lists of attacks: the attack, and its source for a transfer."""
    return f"{row['attack']} from {row['attack_source']}" if row.get("attack_source") else str(row["attack"])


def _same_images(outcomes: Sequence[Outcomes], rows: pd.DataFrame) -> bool:
    sets = set(rows["image_set"]) if "image_set" in rows else {""}
    return len(sets) == 1 and "" not in sets and all(np.array_equal(o.index, outcomes[0].index) for o in outcomes)


def _paired_outcomes(rows: pd.DataFrame, load: Loader) -> list[Outcomes] | str:
    """Every row's outcomes, all on one image set; or why they cannot be paired."""
    loaded = [load(r) for _, r in rows.iterrows()]
    outcomes = [o for o in loaded if o is not None]
    if len(outcomes) < len(loaded):
        return NEEDS_OUTCOMES
    if not _same_images(outcomes, rows):
        return OTHER_IMAGES
    return outcomes


def worst_case_images(group: pd.DataFrame, load: Loader) -> tuple[np.ndarray, str] | str:
    """Per image of an attacked group (one variant, dataset, norm, and the attacks at an eps and every smaller eps):
    robust under every attack of the group (clean-correct and never fooled), with the image set; or why it cannot
    be told."""
    outcomes = _paired_outcomes(group, load)
    if isinstance(outcomes, str):
        return outcomes
    return np.logical_and.reduce([o.ok for o in outcomes]), str(group["image_set"].iloc[0])


def threat_families(attacked: pd.DataFrame, by: Sequence[str]) -> Iterator[tuple[tuple, float, pd.DataFrame]]:
    """Per group of `by` (which includes the norm) and eps: the attack rows at that eps or a smaller one. An image
    broken inside a smaller ball is broken inside the larger, so the worst case at eps covers them all."""
    for key, family in attacked.groupby(list(by), sort=False):
        for eps in sorted(family["eps"].unique()):
            yield key if isinstance(key, tuple) else (key,), float(eps), family[family["eps"] <= eps]


def _attacks_list(group: pd.DataFrame, eps: float) -> str:
    return ", ".join(sorted(attack_label(r) + ("" if r["eps"] == eps else f" at {format_eps(r['eps'], r['norm'])}")
                            for _, r in group.iterrows()))


def worst_case(df: pd.DataFrame, load: Loader) -> pd.DataFrame:
    """Per variant, dataset and threat model (norm, eps): the fraction of images that are clean-correct and
    survive every attack run on them at that eps or a smaller one, its Wilson interval and the attacks it covers;
    `status` says why a figure is missing (no outcomes, or attacks on different images). A variant is the same
    checkpoint under the same lambda setting in every run given (`base_variant`, `checkpoint_sha256` where
    load_runs added them), so the attacks of several runs on one model combine; its row takes the first of its
    labels."""
    attacked = _attacked(df)
    model = ["base_variant", "checkpoint_sha256"] if "base_variant" in attacked else ["variant"]
    labels = attacked.groupby(model, sort=False)["variant"].first()
    rows = []
    for (*key, dataset, norm), eps, group in threat_families(attacked, [*model, "dataset", "norm"]):
        variant = str(labels[tuple(key) if len(key) > 1 else key[0]])
        row = {"variant": variant, "dataset": dataset, "norm": norm, "eps": eps, "attacks": _attacks_list(group, eps),
               "n": math.nan, "robust": math.nan, "accuracy": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "best_single": float(group["accuracy"].min()), "status": ""}
        found = worst_case_images(group, load)
        if isinstance(found, str):
            row["status"] = found
        else:
            robust = found[0]
            n, k = len(robust), int(robust.sum())
            lo, hi = wilson_interval(k, n)
            row.update(n=n, robust=k, accuracy=k / n if n else math.nan, ci_low=lo, ci_high=hi)
        rows.append(row)
    columns = ["variant", "dataset", "norm", "eps", "attacks", "n", "robust", "accuracy", "ci_low", "ci_high",
               "best_single", "status"]
    return pd.DataFrame(rows, columns=columns).sort_values(["variant", "dataset", "norm", "eps"], kind="stable")


def _attacked(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["attack"] != NONE) & (df["corruption"] == NONE)]


def mcnemar_p(a_only: int, b_only: int, alternative: str = "two-sided") -> float:
    """Exact McNemar test: of the discordant images, are the two directions equally likely? `alternative`
    "greater": are the images only a got right more than chance (b is worse)?"""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return float(scipy.stats.binomtest(a_only, discordant, 0.5, alternative=alternative).pvalue)


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
                                   method="percentile", random_state=np.random.default_rng(seed), vectorized=True,
                                   batch=BOOTSTRAP_BATCH)
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


def bootstrap_statistic(n: int, statistic: Callable[[np.ndarray], float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> Interval:
    """statistic(image indices) on all n images and its 95% percentile bootstrap interval over images (scipy's
    bootstrap resamples the indices; the statistic reads every cell at the same resampled images)."""
    estimate = float(statistic(np.arange(n)))
    if n < 2:
        return Interval(estimate, estimate, estimate)
    result = scipy.stats.bootstrap((np.arange(n),), statistic, n_resamples=resamples, confidence_level=0.95,
                                   method="percentile", random_state=np.random.default_rng(seed), vectorized=False,
                                   batch=BOOTSTRAP_BATCH)
    # NaN where some resample leaves the statistic undefined (an mCE whose baseline makes no error there)
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


@dataclass(frozen=True)
class CellOutcomes:
    """A variant's per-image outcomes on its clean cell and its benchmark corruption cells, on one image set."""
    clean: np.ndarray | None  # (images,) or None without a clean row
    cells: dict[tuple[str, int], np.ndarray]  # (corruption, severity) -> (images,)
    image_set: str


def corruption_outcomes(df: pd.DataFrame, variant: str, load: Loader) -> CellOutcomes | str:
    """The variant's clean and benchmark-corruption outcomes on one image set, or why there are none."""
    rows = df[(df["variant"] == variant) & (df["attack"] == NONE)
              & (df["corruption"].isin(BENCHMARK) | (df["corruption"] == NONE))]
    if not rows["corruption"].isin(BENCHMARK).any():
        return "no corruption cells"
    outcomes = _paired_outcomes(rows, load)
    if isinstance(outcomes, str):
        return outcomes
    clean, cells = None, {}
    for (_, r), o in zip(rows.iterrows(), outcomes):
        if r["corruption"] == NONE:
            clean = o.ok
        else:
            cells[r["corruption"], int(r["severity"])] = o.ok
    return CellOutcomes(clean, cells, str(rows["image_set"].iloc[0]))


def mean_accuracy_interval(c: CellOutcomes) -> Interval:
    """Mean corruption accuracy (the unweighted mean over cells) with its bootstrap interval over images."""
    return bootstrap_mean(np.stack(list(c.cells.values()), axis=1))


def mce_intervals(c: CellOutcomes, base: CellOutcomes) -> tuple[Interval, Interval] | str:
    """mCE and relative mCE against a baseline on the same images (over the cells both have), each with its
    bootstrap interval over images (images resampled jointly for both variants and every cell)."""
    if c.image_set != base.image_set:
        return OTHER_IMAGES
    common = sorted(set(c.cells) & set(base.cells))
    clean, base_clean = c.clean, base.clean
    if not common or clean is None or base_clean is None:
        return "no common cells"
    mine = np.stack([c.cells[k] for k in common], axis=1)
    theirs = np.stack([base.cells[k] for k in common], axis=1)
    groups = [[i for i, k in enumerate(common) if k[0] == name] for name in dict.fromkeys(k[0] for k in common)]

    def ratios(idx: np.ndarray, relative: bool) -> float:
        err, base_err = 1 - mine[idx].mean(axis=0), 1 - theirs[idx].mean(axis=0)
        if relative:
            err, base_err = err - (1 - clean[idx].mean()), base_err - (1 - base_clean[idx].mean())
        values = [err[g].sum() / base_err[g].sum() for g in groups if base_err[g].sum() != 0]
        return float(np.mean(values)) if values else math.nan

    n = len(mine)
    return (bootstrap_statistic(n, lambda idx: ratios(idx, False)),
            bootstrap_statistic(n, lambda idx: ratios(idx, True)))


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
    key = ["dataset", "corruption", "severity", "norm", "eps", *ATTACK_SETTINGS]
    rows_a, rows_b = df[df["variant"] == a], df[df["variant"] == b]
    merged = rows_a.reset_index().merge(rows_b.reset_index(), on=key, suffixes=("_a", "_b"))
    if merged["index_a"].duplicated().any() or merged["index_b"].duplicated().any():
        return AMBIGUOUS
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
        return f"{attack_label(row)} {row['norm']} eps {format_eps(row['eps'], row['norm'])}"
    return "clean" if row["corruption"] == NONE else f"{row['corruption']} {int(row['severity'])}"


def verdict(d: Difference, *, alpha: float = 0.05) -> str:
    """Plain words: 'a vs b: -0.28 points (95% CI -1.1..0.5), not significant'."""
    ci = d.difference
    decided = (d.p_holm < alpha) if not math.isnan(d.p_holm) else (ci.low > 0 or ci.high < 0)
    return (f"{d.a} vs {d.b}: {100 * ci.estimate:+.2f} points (95% CI {100 * ci.low:+.2f}..{100 * ci.high:+.2f}), "
            f"{'significant' if decided else 'not significant'}")


def default_pairs(df: pd.DataFrame, baseline: str | None) -> list[tuple[str, str]]:
    """The comparisons a report makes: each adaptive mode against the same model's reference fixed lambda (the
    fixed lambda evaluated on most cells; ties: the smallest), and every other variant against the baseline (the
    first variant when none is named)."""
    pairs = []
    for model, sub in df.groupby("model", sort=False):
        fixed = sub[sub["lambda_mode"] == "fixed"]
        if fixed.empty:
            continue
        ref_lambda = reference_lambda(fixed)
        ref_variant = str(fixed[fixed["lambda"] == ref_lambda]["variant"].iloc[0])
        for variant in dict.fromkeys(sub.loc[sub["lambda_mode"].str.startswith("adaptive"), "variant"]):
            pairs.append((str(variant), ref_variant))
    order = list(dict.fromkeys(df["variant"]))
    reference = baseline if baseline is not None else order[0] if order else None
    pairs += [(str(v), str(reference)) for v in order if v != reference]
    return list(dict.fromkeys(pairs))


def aggregate_differences(df: pd.DataFrame, a: str, b: str, load: Loader) -> list[tuple[str, int, Interval] | str]:
    """a - b on the aggregates: mean corruption accuracy over the cells both ran, and worst-case robust accuracy
    per threat model both were attacked under; each with a paired bootstrap interval over images (or why not)."""
    out: list[tuple[str, int, Interval] | str] = []
    ca, cb = corruption_outcomes(df, a, load), corruption_outcomes(df, b, load)
    if isinstance(ca, CellOutcomes) and isinstance(cb, CellOutcomes):
        common = sorted(set(ca.cells) & set(cb.cells))
        if ca.image_set != cb.image_set:
            out.append(f"mean corruption accuracy: {OTHER_IMAGES}")
        elif common:
            diff = np.stack([ca.cells[k].astype(float) - cb.cells[k] for k in common], axis=1)
            out.append((f"mean corruption accuracy ({len(common)} cells)", len(diff), bootstrap_mean(diff)))
    elif "no corruption cells" not in (ca, cb):
        out.append(f"mean corruption accuracy: {ca if isinstance(ca, str) else cb}")
    attacked = _attacked(df)
    for (dataset, norm), eps, group_a in threat_families(attacked[attacked["variant"] == a], ["dataset", "norm"]):
        group_b = attacked[(attacked["variant"] == b) & (attacked["dataset"] == dataset) & (attacked["norm"] == norm)
                           & (attacked["eps"] <= eps)]
        both = set(_attack_settings(group_a)) & set(_attack_settings(group_b))
        if not both:
            continue
        group_a = group_a[[s in both for s in _attack_settings(group_a)]]
        group_b = group_b[[s in both for s in _attack_settings(group_b)]]
        what = f"worst case {norm} eps {format_eps(eps, norm)} ({len(both)} attacks run on both)"
        wa, wb = worst_case_images(group_a, load), worst_case_images(group_b, load)
        if isinstance(wa, str) or isinstance(wb, str):
            out.append(f"{what}: {wa if isinstance(wa, str) else wb}")
        elif wa[1] != wb[1]:
            out.append(f"{what}: {OTHER_IMAGES}")
        else:
            out.append((what, len(wa[0]), bootstrap_mean(wa[0].astype(float) - wb[0])))
    return out


def _attack_settings(rows: pd.DataFrame) -> list[tuple[str, ...]]:
    return [tuple(str(r[c]) for c in ATTACK_SETTINGS) for _, r in rows.iterrows()]


def differences_table(df: pd.DataFrame, pairs: Sequence[tuple[str, str]], load: Loader) -> pd.DataFrame:
    """One row per comparison and aggregate: a - b in accuracy with its paired 95% interval and plain words."""
    rows = []
    for a, b in pairs:
        for found in aggregate_differences(df, a, b, load):
            if isinstance(found, str):
                what, status = found.split(": ", 1)
                rows.append({"a": a, "b": b, "what": what, "n": math.nan, "difference": math.nan, "ci_low": math.nan,
                             "ci_high": math.nan, "verdict": status})
                continue
            what, n, ci = found
            d = Difference(what, a, b, n, ci, math.nan, math.nan)
            rows.append({"a": a, "b": b, "what": what, "n": n, "difference": ci.estimate, "ci_low": ci.low,
                         "ci_high": ci.high, "verdict": verdict(d)})
    return pd.DataFrame(rows, columns=["a", "b", "what", "n", "difference", "ci_low", "ci_high", "verdict"])


def cell_differences_table(df: pd.DataFrame, pairs: Sequence[tuple[str, str]], load: Loader) -> pd.DataFrame:
    """One row per comparison and cell both variants ran on the same images: a - b, its paired interval, the exact
    McNemar p and its Holm adjustment over the comparison's cells."""
    rows = []
    for a, b in pairs:
        found = paired_cells(df, a, b, load)
        if isinstance(found, str):
            rows.append({"a": a, "b": b, "cell": "all", "n": math.nan, "difference": math.nan, "ci_low": math.nan,
                         "ci_high": math.nan, "p": math.nan, "p_holm": math.nan, "status": found})
            continue
        rows += [{"a": a, "b": b, "cell": d.what, "n": d.n, "difference": d.difference.estimate,
                  "ci_low": d.difference.low, "ci_high": d.difference.high, "p": d.p_value, "p_holm": d.p_holm,
                  "status": "significant" if d.p_holm < 0.05 else "not significant"} for d in found]
    return pd.DataFrame(rows, columns=["a", "b", "cell", "n", "difference", "ci_low", "ci_high", "p", "p_holm",
                                       "status"])
