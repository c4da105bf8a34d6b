"""The CI gate: compare a current results.csv with a committed baseline, cell by cell, and fail only when
accuracy really drops.

A cell fails when its accuracy drops by more than `max_drop` percentage points AND the drop is statistically
significant for the two sample sizes: a one-sided two-proportion z-test with the pooled proportion,

    p = (c_b + c_c) / (n_b + n_c),  z = (c_b / n_b - c_c / n_c) / sqrt(p (1 - p) (1 / n_b + 1 / n_c)),
    p-value = P(Z >= z) for a standard normal Z,

rejects "the current accuracy is not lower" at level `alpha`. Both conditions are needed: a drop of a fraction
of a point on 10,000 images can be significant yet harmless, and a drop of 10 points on 20 images can be noise.

When both files carry per-image outcomes of the same images (schema 4: the same `image_set` fingerprint and
indices), the cell is tested paired instead: the exact one-sided McNemar test, whose p-value is the probability
of at least `lost` successes in `lost + gained` fair coin flips (lost: images the baseline got right and the
current run wrong; gained: the reverse). It uses what the unpaired test ignores, that the same images are hard for
both, and so detects smaller drops. Otherwise (older files, other images) the unpaired z-test decides, which
treats the runs as independent samples and is conservative for positively correlated outcomes. Each cell's row
says which test decided. Each cell is tested at `alpha`; `correction="holm"` adjusts the p-values with Holm's
step-down method, so that the chance of any false alarm over all cells stays below `alpha`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from robustlab.errors import RobustlabError
from robustlab.outcomes import Outcomes, read_outcomes
from robustlab.reports.paired import holm, mcnemar_p
from robustlab.schema import IDENTITY, IDENTITY_NUMBERS, cell_key, read_results

# a cell as the gate matches it: the results' identity less what may differ between a baseline and a new run of the
# same cell (the checkpoint under test, the sample size, the seed)
KEY = [c for c in IDENTITY if c not in ("checkpoint_sha256", "n", "seed")]
NUMBERS = [c for c in KEY if c in IDENTITY_NUMBERS]
NEEDED = [*KEY, "n", "correct"]
EXIT_OK, EXIT_REGRESSION = 0, 1
PAIRED, UNPAIRED = "McNemar (paired)", "z-test (unpaired)"
CORRECTIONS = ("none", "holm")


@dataclass
class RegressResult:
    """cells: one row per matched cell (the key columns, then baseline_n, baseline_correct, baseline_accuracy,
    current_n, current_correct, current_accuracy, drop (points, positive = worse), test (PAIRED or UNPAIRED), z
    (unpaired only), p_value (Holm-adjusted under that correction), significant, regression, verdict). new_cells:
    cells of the current results absent from the baseline (not tested)."""
    cells: pd.DataFrame
    new_cells: int
    max_drop: float
    alpha: float
    correction: str = "none"

    @property
    def regressions(self) -> pd.DataFrame:
        return self.cells[self.cells["regression"]]

    @property
    def failed(self) -> bool:
        return bool(self.cells["regression"].any())

    def to_json(self) -> str:
        """The cells as JSON records, the numeric key columns as numbers (null where a cell has none: the eps of
        an unattacked cell, the lambda of an adaptive one); the keys are matched as the text the CSV holds."""
        numeric = {c: pd.to_numeric(self.cells[c].replace("", None)) for c in NUMBERS}
        return self.cells.assign(**numeric).to_json(orient="records", indent=2, double_precision=15)


def drop_test(base_correct: int, base_n: int, cur_correct: int, cur_n: int) -> tuple[float, float]:
    """One-sided pooled two-proportion z-test of H1: current accuracy < baseline accuracy -> (z, p-value).
    No variation at all (both 0% or both 100%) gives z = 0, p = 1; an empty sample gives NaN."""
    if base_n <= 0 or cur_n <= 0:
        return math.nan, math.nan
    pooled = (base_correct + cur_correct) / (base_n + cur_n)
    var = pooled * (1 - pooled) * (1 / base_n + 1 / cur_n)
    if var <= 0:
        return 0.0, 1.0
    z = (base_correct / base_n - cur_correct / cur_n) / math.sqrt(var)
    return z, 0.5 * math.erfc(z / math.sqrt(2))  # the standard normal survival function at z


def _text(v: object) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _number(v: str | float | None) -> str:
    """Numbers as keys: equal after a CSV round trip (10 significant digits), NaN as empty."""
    if v is None or v == "":
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "" if math.isnan(f) else f"{f:.10g}"


def _count(v: float) -> int:
    return 0 if pd.isna(v) else int(v)


def cell_keys(df: pd.DataFrame) -> pd.Series:
    """A hashable key per row; lambda is part of it for fixed-lambda rows only (adaptive rows choose it)."""
    cols = {c: df[c].map(_number if c in NUMBERS else _text) for c in KEY}
    cols["lambda"] = cols["lambda"].where(cols["lambda_mode"] == "fixed", "")
    return pd.Series(list(zip(*(cols[c] for c in KEY))), index=df.index)


def _check(df: pd.DataFrame, name: str) -> None:
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise RobustlabError(f"{name} results lack the columns {', '.join(missing)}; is it a robustlab results.csv?")


def _schema(baseline: pd.DataFrame, current: pd.DataFrame) -> None:
    # a file's own header (read_results fills the columns it lacks), else the frame's
    b, c = (set(df.attrs.get("columns", df.columns)) for df in (baseline, current))
    if b != c:
        parts = []
        if b - c:
            parts.append(f"only in baseline: {', '.join(sorted(b - c))}")
        if c - b:
            parts.append(f"only in current: {', '.join(sorted(c - b))}")
        raise RobustlabError(f"baseline and current results have different columns ({'; '.join(parts)}); "
                             "regenerate the baseline with this robustlab version")
    if "schema_version" in b:
        bv = sorted({_number(v) for v in baseline["schema_version"]})
        cv = sorted({_number(v) for v in current["schema_version"]})
        if bv != cv:
            raise RobustlabError(f"baseline has schema_version {', '.join(bv)} but current has {', '.join(cv)}; "
                                 "regenerate the baseline with this robustlab version")


def _index(df: pd.DataFrame, name: str) -> dict[tuple, dict]:
    """Cell key -> row (as a dict), refusing repeated cells."""
    keys = cell_keys(df)
    dup = keys.duplicated(keep=False)
    if dup.any():
        raise RobustlabError(f"{name} results hold {int(dup.sum())} rows for repeated cells, e.g. "
                             f"{_describe(keys[dup].iloc[0])}; keep one evaluation per cell")
    return dict(zip(keys, df.to_dict("records")))


def _describe(key: tuple) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(KEY, key) if v not in ("", "none"))


def _outcomes(df: pd.DataFrame, row: dict) -> Outcomes | None:
    """A row's per-image outcomes from beside its results file, None where it has none."""
    name = row.get("outcomes") or ""
    if not name or "path" not in df.attrs:
        return None
    return read_outcomes(Path(df.attrs["path"]).parent, name, key=cell_key(row), image_set=row["image_set"],
                         n=_count(row["n"]), correct=_count(row["correct"]))


def _paired(base: Outcomes | None, cur: Outcomes | None, brow: dict, crow: dict) -> tuple[int, int] | None:
    """(lost, gained) images when both rows carry outcomes of the same images, else None."""
    if base is None or cur is None or not brow.get("image_set") or brow["image_set"] != crow.get("image_set") \
            or not np.array_equal(base.index, cur.index):
        return None
    return int((base.ok & ~cur.ok).sum()), int((~base.ok & cur.ok).sum())


def compare(baseline: pd.DataFrame, current: pd.DataFrame, *, max_drop: float = 1.0,
            alpha: float = 0.05, correction: str = "none") -> RegressResult:
    """Match rows by cell key (KEY; lambda for fixed-lambda rows only) and test each baseline cell's drop.

    A cell is a regression when baseline minus current accuracy exceeds `max_drop` percentage points and the
    one-sided test (see the module docstring: exact McNemar where both carry outcomes of the same images, else
    the pooled two-proportion z-test) gives p < alpha, Holm-adjusted over the cells with `correction="holm"`.
    Accuracies are recomputed from correct / n. Raises RobustlabError on a schema mismatch (other columns or
    schema_version), on a baseline cell missing from the current results or evaluated there on no images (n = 0),
    on repeated cells, or on a damaged outcome file."""
    if not (0 < alpha < 1):
        raise RobustlabError(f"alpha must be between 0 and 1, got {alpha}")
    if correction not in CORRECTIONS:
        raise RobustlabError(f"unknown correction {correction!r}; pass one of {', '.join(CORRECTIONS)}")
    if not (max_drop >= 0):
        raise RobustlabError(f"max_drop must be >= 0 percentage points, got {max_drop}")
    _check(baseline, "baseline")
    _check(current, "current")
    _schema(baseline, current)
    if baseline.empty:
        raise RobustlabError("the baseline holds no result rows; nothing to gate on")
    b, c = _index(baseline, "baseline"), _index(current, "current")
    missing = [k for k in b if k not in c]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RobustlabError(f"cell missing from the current results: {_describe(missing[0])}{more}; evaluate the "
                             "same cells as the baseline, or update the baseline")
    empty = [k for k in b if _count(c[k]["n"]) == 0]  # tests nothing: a run that evaluated nothing must not pass
    if empty:
        raise RobustlabError(f"the current results evaluated no images (n = 0) in {len(empty)} of the {len(b)} "
                             f"baseline cells, e.g. {_describe(empty[0])}; fix the current run so that it evaluates "
                             "images, or remove those cells from the baseline")
    tested = []
    for key, brow in b.items():
        crow = c[key]
        bn, bc, cn, cc = (_count(v) for v in (brow["n"], brow["correct"], crow["n"], crow["correct"]))
        pair = _paired(_outcomes(baseline, brow), _outcomes(current, crow), brow, crow)
        if pair is None:
            z, p = drop_test(bc, bn, cc, cn)
        else:
            z, p = math.nan, mcnemar_p(*pair, alternative="greater")
        tested.append((key, brow, bn, bc, cn, cc, PAIRED if pair is not None else UNPAIRED, z, p))
    finite = [i for i, t in enumerate(tested) if not math.isnan(t[-1])]
    adjusted = {i: p for i, p in zip(finite, holm([tested[i][-1] for i in finite]))} if correction == "holm" \
        else {i: tested[i][-1] for i in finite}
    rows = []
    for i, (key, brow, bn, bc, cn, cc, test, z, p) in enumerate(tested):
        p = adjusted.get(i, p)
        bacc, cacc = (bc / bn if bn else math.nan), (cc / cn if cn else math.nan)
        drop = 100 * (bacc - cacc)
        significant = bool(p < alpha) if not math.isnan(p) else False
        large = bool(drop - max_drop > 1e-9)  # "larger than", robust to float rounding of the points
        regression = significant and large
        if math.isnan(p):
            verdict = "no data"
        elif regression:
            verdict = "FAIL"
        elif large:
            verdict = "ok (drop within noise)"
        elif significant:
            verdict = "ok (drop within max-drop)"
        else:
            verdict = "ok"
        rows.append({**dict(zip(KEY, key)), "baseline_n": bn, "baseline_correct": bc, "baseline_accuracy": bacc,
                     "current_n": cn, "current_correct": cc, "current_accuracy": cacc, "drop": drop, "test": test,
                     "z": z, "p_value": p, "significant": significant, "regression": regression, "verdict": verdict})
    new = sum(1 for k in c if k not in b)
    return RegressResult(pd.DataFrame(rows), new, max_drop, alpha, correction)


def exit_code(result: RegressResult) -> int:
    """1 when any cell dropped significantly by more than max_drop points, else 0."""
    return EXIT_REGRESSION if result.failed else EXIT_OK


def _label(row: pd.Series) -> str:
    parts = [row["model"]]
    if row["lambda_mode"] not in ("", "n.a."):
        parts.append(f"[{row['lambda_mode']}{' ' + row['lambda'] if row['lambda'] else ''}]")
    parts.append(f"{row['dataset']}/{row['split']}")
    if row["corruption"] != "none":
        parts.append(f"{row['corruption']} s{row['severity']}")
    if row["attack"] != "none":
        parts.append(f"{row['attack']} {row['norm']} eps={row['eps']}"
                     + (f" steps={row['steps']}" if row["steps"] not in ("", "0") else "")
                     + (f" queries={row['queries']}" if row["queries"] not in ("", "0") else "")
                     + (f" from {row['attack_source']}" if row["attack_source"] else ""))
    if row["corruption"] == "none" and row["attack"] == "none":
        parts.append("clean")
    return " ".join(parts)


def format_table(result: RegressResult) -> str:
    """A plain-text table of every matched cell (baseline and current accuracy in %, drop in points, one-sided
    p-value, verdict) and a one-line summary."""
    header = ["cell", "baseline %", "current %", "drop pts", "test", "p-value", "verdict"]
    rows = [[_label(r), f"{100 * r['baseline_accuracy']:.2f} (n={r['baseline_n']})",
             f"{100 * r['current_accuracy']:.2f} (n={r['current_n']})", f"{r['drop']:+.2f}", r["test"],
             "-" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}", r["verdict"]]
            for _, r in result.cells.iterrows()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 2, 3, 5}
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in [header, *rows]]
    n_fail = int(result.cells["regression"].sum()) if len(result.cells) else 0
    holm_note = ", Holm-adjusted over the cells" if result.correction == "holm" else ""
    summary = (f"{len(result.cells)} cells compared, {n_fail} regressed (drop > {result.max_drop:g} points and "
               f"one-sided p < {result.alpha:g}{holm_note})")
    if result.new_cells:
        summary += f"; {result.new_cells} new cells not in the baseline (not tested)"
    return "\n".join([*lines, "", ("FAIL: " if n_fail else "PASS: ") + summary])


def regress(baseline_csv: str | Path, current_csv: str | Path, *, max_drop: float = 1.0, alpha: float = 0.05,
            correction: str = "none", stream: IO[str] | None = None) -> int:
    """`robustlab regress BASELINE.csv CURRENT.csv`: compare, print the table to `stream` (stdout), return the
    exit code (0 pass, 1 regression). Bad input raises RobustlabError (the CLI's exit code 2)."""
    result = compare(read_results(baseline_csv), read_results(current_csv), max_drop=max_drop, alpha=alpha,
                     correction=correction)
    print(format_table(result), file=stream or sys.stdout)
    return exit_code(result)
