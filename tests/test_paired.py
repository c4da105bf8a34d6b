"""Paired statistics over per-image outcomes, each against a brute-force computation from its definition."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from robustlab.outcomes import Outcomes
from robustlab.reports.paired import (
    AMBIGUOUS,
    NEEDS_OUTCOMES,
    OTHER_IMAGES,
    aggregate_differences,
    bootstrap_mean,
    holm,
    mcnemar_p,
    paired_cells,
    worst_case,
)


def brute_mcnemar(b: int, c: int) -> float:
    """Two-sided exact test of b successes in b + c fair coin flips: the probability of every outcome no more
    likely than the one observed."""
    n = b + c
    probs = [math.comb(n, k) / 2 ** n for k in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[b] * (1 + 1e-7)))


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 9), (9, 3), (10, 10), (0, 12), (25, 40), (150, 86)])
def test_exact_mcnemar_equals_the_binomial_sum(b, c):
    assert mcnemar_p(b, c) == pytest.approx(brute_mcnemar(b, c) if b + c else 1.0, rel=1e-9)


def test_holm_follows_its_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_bootstrap_interval_matches_a_hand_written_bootstrap_and_the_normal_width():
    rng = np.random.default_rng(1)
    ease = rng.beta(0.6, 0.4, 1000)  # images differ in how easy they are, in every cell alike (as real ones do)
    matrix = rng.random((1000, 6)) < ease[:, None]
    got = bootstrap_mean(matrix)
    assert got.estimate == pytest.approx(matrix.mean())
    per_image = matrix.mean(axis=1)
    draws = np.random.default_rng(7).integers(0, 1000, (4000, 1000))
    means = per_image[draws].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert got.low == pytest.approx(lo, abs=0.004)
    assert got.high == pytest.approx(hi, abs=0.004)
    half = 1.96 * per_image.std() / math.sqrt(1000)
    assert (got.high - got.low) / 2 == pytest.approx(half, rel=0.1)
    # the pooled interval treats 6,000 cell-images as independent: much narrower than the images allow
    pooled = 1.96 * math.sqrt(matrix.mean() * (1 - matrix.mean()) / 6000)
    assert pooled < 0.6 * half


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {"dataset": "d", "corruption": "none", "severity": 0, "attack_source": "", "norm": "Linf",
            "eps": 0.1, "image_set": "s1", "steps": 10, "queries": 0, "alpha": np.nan, "restarts": 1,
            "attack_config": "c"}
    return pd.DataFrame([{**base, **r} for r in rows])


def _outcomes(ok) -> Outcomes:
    ok = np.asarray(ok, bool)
    return Outcomes(index=np.arange(len(ok)), ok=ok, pred=np.zeros(len(ok), np.int64))


def test_worst_case_is_the_images_that_survive_every_attack():
    rng = np.random.default_rng(0)
    clean = rng.random(200) < 0.9
    pgd, square = clean & (rng.random(200) < 0.6), clean & (rng.random(200) < 0.65)
    df = _frame([{"variant": "m", "attack": "pgd-linf", "accuracy": pgd.mean(), "key": "p"},
                 {"variant": "m", "attack": "square", "accuracy": square.mean(), "key": "s"}])
    store = {"p": _outcomes(pgd), "s": _outcomes(square)}
    table = worst_case(df, lambda r: store[r["key"]])
    row = table.iloc[0]
    assert row["robust"] == int((pgd & square).sum())
    assert row["n"] == 200
    assert row["accuracy"] <= min(pgd.mean(), square.mean())
    assert row["accuracy"] < min(pgd.mean(), square.mean())
    assert row["attacks"] == "pgd-linf, square"
    assert row["ci_low"] < row["accuracy"] < row["ci_high"]
    assert worst_case(df, lambda r: None).iloc[0]["status"] == NEEDS_OUTCOMES
    other = df.assign(image_set=["s1", "s2"])
    assert worst_case(other, lambda r: store[r["key"]]).iloc[0]["status"] == OTHER_IMAGES


def test_paired_cells_give_mcnemar_and_refuse_other_images():
    rng = np.random.default_rng(3)
    a = rng.random(500) < 0.7
    b = a.copy()
    flip = rng.choice(500, 40, replace=False)
    b[flip[:30]] = False  # b loses 30 images a classified, and gains 10
    b[flip[30:]] = True
    df = _frame([{"variant": "a", "attack": "none", "accuracy": a.mean(), "key": "a", "eps": 0.0, "norm": "none"},
                 {"variant": "b", "attack": "none", "accuracy": b.mean(), "key": "b", "eps": 0.0, "norm": "none"}])
    store = {"a": _outcomes(a), "b": _outcomes(b)}
    (d,) = paired_cells(df, "a", "b", lambda r: store[r["key"]])
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert d.difference.estimate == pytest.approx(a.mean() - b.mean())
    assert d.p_value == pytest.approx(brute_mcnemar(only_a, only_b))
    assert d.p_value < 0.01
    assert d.difference.low > 0
    assert paired_cells(df.assign(image_set=["s1", "s2"]), "a", "b", lambda r: store[r["key"]]) == OTHER_IMAGES


def test_variants_are_compared_only_over_the_attacks_both_ran_with_the_same_settings():
    rng = np.random.default_rng(5)
    clean = rng.random(300) < 0.9
    pgd_a, pgd_b, square_a = (clean & (rng.random(300) < p) for p in (0.6, 0.6, 0.3))
    df = _frame([{"variant": "a", "attack": "pgd-linf", "accuracy": pgd_a.mean(), "key": "pa"},
                 {"variant": "a", "attack": "square", "accuracy": square_a.mean(), "key": "sa"},
                 {"variant": "b", "attack": "pgd-linf", "accuracy": pgd_b.mean(), "key": "pb"},
                 {"variant": "b", "attack": "pgd-linf", "accuracy": 0.1, "key": "pb50", "steps": 50}])
    store = {"pa": _outcomes(pgd_a), "sa": _outcomes(square_a), "pb": _outcomes(pgd_b),
             "pb50": _outcomes(clean & (rng.random(300) < 0.1))}
    (what, n, interval), = aggregate_differences(df, "a", "b", lambda r: store[r["key"]])
    assert "1 attacks run on both" in what
    assert n == 300
    assert interval.estimate == pytest.approx(pgd_a.mean() - pgd_b.mean())  # not a's Square, not b's PGD-50
    (cell,) = paired_cells(df, "a", "b", lambda r: store[r["key"]])
    assert cell.difference.estimate == pytest.approx(pgd_a.mean() - pgd_b.mean())
    twice = pd.concat([df, df[df["key"] == "pb"]], ignore_index=True)
    assert paired_cells(twice, "a", "b", lambda r: store[r["key"]]) == AMBIGUOUS


def test_a_rank_without_images_leaves_the_lambdas_of_the_others():
    part = Outcomes(index=np.arange(3), ok=np.ones(3, bool), pred=np.zeros(3, np.int64),
                    lambdas=np.full(3, 0.2, np.float32))
    empty = Outcomes(index=np.zeros(0, np.int64), ok=np.zeros(0, bool), pred=np.zeros(0, np.int64))
    joined = Outcomes.joined([empty, part])
    assert joined.n == 3
    assert joined.lambdas is not None
    assert joined.lambdas.tolist() == pytest.approx([0.2] * 3)
