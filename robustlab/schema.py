"""The results schema: the columns of a row, a cell's identity, the flag vocabulary, lambda modes, and the one
reader of results files (every reader — report, metrics, regress — goes through read_results), and of the JSON files
beside them (read_json_object)."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from robustlab.errors import RobustlabError

# 2: queries, alpha, attack_config, batch_size and flags_model; steps only counts iterations
# 3: lambda_low and lambda_high (per-set selection's bounds); per-set selection samples (lambda_from_sample_N)
# 4: image_set (the fingerprint of the images a cell saw) and outcomes (its per-image outcome file)
SCHEMA_VERSION = 4
Z95 = 1.959963984540054
NONE = "none"  # the corruption and attack of a clean cell, and the norm of an unattacked one


class LambdaMode(str, Enum):
    """How a row's CSC lambda was set (the `lambda_mode` column)."""
    FIXED = "fixed"
    ADAPTIVE_SET = "adaptive-set"  # Algorithm 1, one lambda per test set
    ADAPTIVE_IMAGE = "adaptive-image"  # Algorithm 1, one lambda per image
    NOT_APPLICABLE = "n.a."  # the model has no CSC layer

    def __str__(self) -> str:
        return self.value

    @property
    def adaptive(self) -> bool:
        return self in (LambdaMode.ADAPTIVE_SET, LambdaMode.ADAPTIVE_IMAGE)


# every flag a row's `flags` column can hold, and what it means (reports print these)
FLAGS = {
    "zero_gradients": "some images have an exactly zero input gradient: gradient attacks cannot move them",
    "eps_not_monotonic": "robust accuracy rises with eps: the attack is failing (masking or too few steps)",
    "black_box_stronger": "a black-box attack beats the white-box one: gradients are unreliable",
    "shattered_gradients": "input-gradient signs at nearby points barely agree: gradients are shattered (use BPDA, "
                           "black-box or transfer attacks)",
    "large_eps_survives": "images survive a huge eps (0.5 Linf): the attack is not working",
    "randomized": "two identical forward passes differ: the model is randomized (use EOT)",
    "bpda_selection": "adaptive lambda selection is not differentiable; gradients pass it by the identity (BPDA)",
}
SAMPLED_FLAG = "lambda_from_sample_{n}"  # per-set selection on a seeded sample of n of a set's images (--select-n)
# an attack run in smaller pieces than its row's batch_size (CUDA out of memory): its seeds, hence its adversarial
# images, are those of that piece size
SMALLER_BATCH_FLAG = "attacked_in_batches_of_{n}"
# the worst-case mode (--cascade) attacked only n images; the others, broken before, count as not robust
CASCADE_FLAG = "cascade_attacked_{n}"


def flag_meaning(flag: str) -> str:
    """What a flag of a row's `flags` column means."""
    for template, meaning in ((SAMPLED_FLAG, "per-set lambda chosen on a seeded sample of {n} of the set's images; "
                                             "lambda_low..lambda_high bound the whole set's choice (95%)"),
                              (SMALLER_BATCH_FLAG, "attacked in pieces of {n} images (out of memory): its seeds are "
                                                   "those of --batch-size {n}"),
                              (CASCADE_FLAG, "worst-case mode: attacked only the {n} images not already broken at "
                                             "this or a smaller eps; the others count as not robust, so the row is "
                                             "the worst case so far, not this attack alone")):
        prefix = template.split("{")[0]
        if flag.startswith(prefix) and flag[len(prefix):].isdigit():
            return meaning.format(n=flag[len(prefix):])
    return FLAGS.get(flag, "see the run log")


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Record:
    """One evaluated cell. Accuracies are fractions in [0, 1]; NaN marks 'not applicable'. lambda is the
    CSC layer's lambda (per-image selection: the mean, with lambda_std the spread; per-set selection on a sample:
    lambda_low..lambda_high, the grid lambdas the whole set could select at 95% confidence). attack_source names the
    model a transfer attack was crafted on (empty otherwise). An attack's budget is `steps` (gradient iterations
    per restart) and `queries` (score-based model queries), 0 where it has none of that kind; `alpha` its step
    size (NaN where the attack sets its own); `attack_config` every other setting robustlab fixes for it;
    `batch_size` the batch it was run in (each batch is seeded from its first image). flags lists warnings
    (gradient masking, ...) separated by ';'; `flags_model` names the model the gradient-masking flags are about
    (a transfer attack's source, whose gradients made it). `image_set` fingerprints the clean images and labels at
    the indices the cell used (rows are paired only on equal fingerprints); `outcomes` names the cell's per-image
    outcome file in the run directory (robustlab/outcomes.py), empty where none was kept."""
    model: str
    arch: str
    checkpoint_sha256: str
    dataset: str
    split: str
    corruption: str
    severity: int
    attack: str
    attack_source: str
    norm: str
    eps: float
    steps: int
    queries: int
    alpha: float
    restarts: int
    attack_config: str
    batch_size: int
    lambda_mode: str
    lmbda: float
    lambda_std: float
    lambda_low: float
    lambda_high: float
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    top5_correct: float
    top5_accuracy: float
    residual_mean: float
    flags: str
    flags_model: str
    seconds: float
    seed: int
    robustlab_version: str
    image_set: str = ""
    outcomes: str = ""
    schema_version: int = SCHEMA_VERSION

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lambda"] = d.pop("lmbda")
        return {name: d[name] for name in COLUMNS}


COLUMNS = [("lambda" if f.name == "lmbda" else f.name) for f in dataclasses.fields(Record)]
# What a row measured, as opposed to what it found: two rows with the same identity are the same cell. An adaptive
# mode's lambda is an outcome, so only a fixed lambda is part of the identity.
IDENTITY = ("model", "checkpoint_sha256", "dataset", "split", "corruption", "severity", "attack", "attack_source",
            "norm", "eps", "steps", "queries", "alpha", "restarts", "attack_config", "batch_size", "lambda_mode",
            "lambda", "n", "seed")
IDENTITY_NUMBERS = ("severity", "eps", "steps", "queries", "alpha", "restarts", "batch_size", "lambda", "n", "seed")
TEXT_COLUMNS = ("model", "arch", "checkpoint_sha256", "dataset", "split", "corruption", "attack", "attack_source",
                "norm", "attack_config", "lambda_mode", "flags", "flags_model", "robustlab_version", "image_set",
                "outcomes")
COUNT_COLUMNS = ("n", "correct")
# what every reader needs; the other columns are filled with "not applicable" when a file lacks them
REQUIRED = ("model", "dataset", "split", "corruption", "severity", "attack", "norm", "eps", "lambda_mode", "lambda",
            "n", "correct")


def cell_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity of a row (a Record's row() or a row read back from results.csv) as CSV text."""
    return tuple("" if c == "lambda" and row["lambda_mode"] != LambdaMode.FIXED else str(format_value(row[c]))
                 for c in IDENTITY)


def format_value(value: Any) -> Any:
    """A value as results.csv holds it: floats at full precision, NaN as empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON file holding an object, as a dict. Text that is not UTF-8, invalid JSON, JSON nested deeper than the
    parser recurses and any value other than an object are a RobustlabError naming the file, ending in `fix`;
    a file that cannot be read is the OSError."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise RobustlabError(f"{path} holds JSON nested too deeply to read; {fix}") from None
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError
        raise RobustlabError(f"{path} holds invalid JSON ({str(e).splitlines()[0][:200]}); {fix}") from None
    if not isinstance(value, dict):
        raise RobustlabError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def read_results(path: str | Path) -> pd.DataFrame:
    """A results.csv (or a run directory holding one), validated and typed: text columns as str ("" when empty),
    the others as numbers (NaN when empty), missing optional columns filled. Every defect is one line naming the
    file (and line): unreadable text, a short or garbage row, missing columns, counts that are not whole numbers
    >= 0 or a correct count above n, no rows at all, repeated cells. `df.attrs` holds the file's `path` and
    its own `columns`."""
    p = Path(path)
    p = p / "results.csv" if p.is_dir() else p
    if not p.is_file():
        raise RobustlabError(f"{path} is not a results.csv file (or a run directory holding one)")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RobustlabError(f"{p} is not a readable results.csv ({str(e).splitlines()[0]})") from None
    if not lines:
        raise RobustlabError(f"{p} is empty; is it a robustlab results.csv?")
    header, rows = lines[0], lines[1:]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise RobustlabError(f"{p} lacks the result columns {', '.join(missing)}; is it a robustlab results.csv?")
    if not rows:
        raise RobustlabError(f"{p} holds a header but no result rows; evaluate something first")
    df = results_frame(p, header, rows)
    df.attrs.update(path=p, columns=header)
    return df


def results_frame(p: Path, header: list[str], rows: list[list[str]]) -> pd.DataFrame:
    """The rows (lines 2, 3, ... of results file p) under their header, validated and typed as read_results
    describes; a resume checks the rows it keeps with it, so that every reader takes the file it leaves."""
    for i, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise RobustlabError(f"{p} line {i} has {len(row)} fields, the header {len(header)}; remove or repair "
                                 "that line (a hand edit or a torn write)")
    df = pd.DataFrame(rows, columns=header)
    for c in COLUMNS:
        if c not in df:
            df[c] = ""
    for c in df.columns:
        if c in TEXT_COLUMNS or c not in COLUMNS:
            continue
        numbers = pd.to_numeric(df[c].replace("", None), errors="coerce")
        bad = numbers.isna() & (df[c] != "")
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise RobustlabError(f"{p} line {i + 2}: {c} is {df[c].iloc[i][:200]!r}, not a number; repair or remove "
                                 "that line")
        df[c] = numbers.astype(float)
    _check_counts(df, p)
    keys = pd.Series([cell_key(r) for r in df.to_dict("records")], index=df.index)
    repeated = keys.duplicated(keep=False)
    if repeated.any():
        lines_ = [str(i + 2) for i in repeated.to_numpy().nonzero()[0][:3]]
        raise RobustlabError(f"{p} holds {int(repeated.sum())} rows for repeated cells (lines {', '.join(lines_)}, "
                             "...): two runs wrote into one file; remove all but one row per cell")
    return df


def _check_counts(df: pd.DataFrame, p: Path) -> None:
    for c in COUNT_COLUMNS:
        values = df[c]
        bad = values.isna() | (values.abs() == math.inf) | (values < 0) | (values != values.round())
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            shown = "empty" if pd.isna(values.iloc[i]) else f"{values.iloc[i]:g}"
            raise RobustlabError(f"{p} line {i + 2}: {c} is {shown}, not a whole number >= 0; repair or remove that "
                                 "line")
    over = df["correct"] > df["n"]
    if over.any():
        i = int(over.to_numpy().nonzero()[0][0])
        raise RobustlabError(f"{p} line {i + 2}: correct {int(df['correct'].iloc[i])} exceeds n "
                             f"{int(df['n'].iloc[i])}; repair or remove that line")
