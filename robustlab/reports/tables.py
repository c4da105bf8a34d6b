"""Plain-text result tables for the terminal."""
from __future__ import annotations

import math
from typing import Sequence

from robustlab.schema import Record


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
             "-" if math.isnan(r.lambda_) else f"{r.lambda_:.3g}", str(r.n), _pct(r.accuracy),
             f"{_pct(r.ci_low)}-{_pct(r.ci_high)}", _pct(r.top5_accuracy)] for r in records]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)
