"""How reports look: one colour per variant, number and eps formatting, the order of corruptions and variants."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd
from matplotlib import colormaps

from robustlab.corruptions.parameters import BENCHMARK, EXTRA


def variant_colors(labels: Iterable[str]) -> dict[str, Any]:
    """THE palette: one colour per variant label, in the order given (tab10, then tab20, then an even hue wheel),
    used by every figure of a report so a variant looks the same everywhere."""
    labels = list(dict.fromkeys(labels))
    if len(labels) <= 10:
        colors = [colormaps["tab10"](i) for i in range(len(labels))]
    elif len(labels) <= 20:
        colors = [colormaps["tab20"](i) for i in range(len(labels))]
    else:
        colors = [colormaps["hsv"](i / len(labels)) for i in range(len(labels))]
    return dict(zip(labels, colors))


def pct(x: Any, digits: int = 2) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * float(x):.{digits}f}"


def ci(lo: Any, hi: Any) -> str:
    return "–" if pd.isna(lo) or pd.isna(hi) else f"{100 * float(lo):.1f}–{100 * float(hi):.1f}"


def num(x: Any) -> str:
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


def lambda_text(row: pd.Series) -> str:
    if pd.isna(row["lambda"]):
        return "–"
    std = row.get("lambda_std", math.nan)
    return f"{row['lambda']:.3g} ± {std:.2g}" if pd.notna(std) and std > 0 else f"{row['lambda']:.3g}"


def corruption_order(names: Iterable[str]) -> list[str]:
    known = ["none", *BENCHMARK, *EXTRA]
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda c: (known.index(c) if c in known else len(known), c))


def in_order(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows sorted by the report's variant order (stable otherwise)."""
    rank = {v: i for i, v in enumerate(order)}
    return df.iloc[np.argsort([rank.get(v, len(rank)) for v in df["variant"]], kind="stable")]
