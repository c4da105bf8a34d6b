"""Figures (PNG and SVG), drawn with matplotlib's non-interactive backend."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from robustlab.files import write_atomic  # noqa: E402
from robustlab.reports.style import corruption_order, format_eps  # noqa: E402


def save(fig: "plt.Figure", stem: str | Path) -> list[Path]:
    """Write stem.png and stem.svg; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=150, bbox_inches="tight", format=p.suffix[1:])
        write_atomic(p, buffer.getvalue())  # never through a planted link
    plt.close(fig)
    return paths


def lambda_residual_figure(calib, stem: str | Path) -> list[Path]:
    """Algorithm 1's fit: every sweep point (residual, lambda) in grey, lambda* per level, and the line."""
    import numpy as np
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter([r["residual_mean"] for r in calib.sweep], [r["lambda"] for r in calib.sweep], s=8, c="0.75",
               label="sweep (level, lambda)")
    pts = calib.points
    sc = ax.scatter([p["residual"] for p in pts], [p["lambda"] for p in pts], c=[p["level"] for p in pts],
                    cmap="viridis", s=40, zorder=3, label="best lambda per noise level")
    fig.colorbar(sc, ax=ax, label=f"{calib.noise} noise level")
    r = np.linspace(min(p["residual"] for p in pts), max(p["residual"] for p in pts), 50)
    ax.plot(r, calib.fit.a * r + calib.fit.b, "r-",
            label=f"lambda = {calib.fit.a:.3g} r + {calib.fit.b:.3g} (R² {calib.fit.r2:.2f})")
    ax.set_xlabel(f"mean residual of CSC layer {calib.layer}")
    ax.set_ylabel("lambda")
    ax.set_title(f"Algorithm 1 calibration ({calib.arch})")
    ax.legend(fontsize=7)
    return save(fig, stem)


def fixed_vs_adaptive_figure(df: pd.DataFrame, stem: str | Path, corruptions: list[str]) -> list[Path]:
    """Accuracy per severity (one panel per corruption) and per attack eps, a line per lambda mode, Wilson CIs."""
    modes = [m for m in ("fixed", "adaptive-set", "adaptive-image") if m in set(df["lambda_mode"])]
    attacked = df[df["attack"] != "none"]
    panels = corruptions + (["attack"] if len(attacked) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharey=True, squeeze=False)
    clean = df[(df["corruption"] == "none") & (df["attack"] == "none")]
    for ax, panel in zip(axes[0], panels):
        for mode in modes:
            if panel == "attack":
                rows = attacked[attacked["lambda_mode"] == mode].sort_values("eps")
            else:
                rows = df[(df["corruption"] == panel) & (df["lambda_mode"] == mode)].sort_values("severity")
            # severity 0 / eps 0 is the clean accuracy
            rows = pd.concat([clean[clean["lambda_mode"] == mode].assign(severity=0, eps=0.0), rows])
            x = (rows["eps"] * 255) if panel == "attack" else rows["severity"]
            acc = rows["accuracy"] * 100
            err = [acc - rows["ci_low"] * 100, rows["ci_high"] * 100 - acc]
            ax.errorbar(x, acc, yerr=err, marker="o", ms=3, capsize=2, label=mode)
        ax.set_title(panel.replace("_", " ") if panel != "attack" else "PGD-10 Linf")
        ax.set_xlabel("eps x 255" if panel == "attack" else "severity (0 = clean)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    return save(fig, stem)


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
    names = corruption_order(corr["corruption"])
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


WORST = "worst case"  # the panel of robust accuracy under every attack


def robust_figure(df: pd.DataFrame, colors: dict[str, Any], stem: Path, title: str = "",
                  worst: pd.DataFrame | None = None) -> list[Path]:
    """Robust accuracy versus eps, a panel per (attack, norm) on clean images, a line per variant (dashed:
    transfer from another model), eps 0 = the clean accuracy, Wilson CIs; with `worst` (reports.paired.worst_case)
    a 'worst case' panel per norm: the images that survive every attack."""
    att = df[(df["attack"] != "none") & (df["corruption"] == "none") & df["eps"].notna()]
    if att.empty:
        return []
    clean = df[(df["attack"] == "none") & (df["corruption"] == "none")]
    worst = worst[worst["accuracy"].notna()] if worst is not None else pd.DataFrame(columns=["norm"])
    if not worst.empty:
        att = pd.concat([att, worst.assign(attack=WORST, attack_source="")], ignore_index=True)
    panels = list(att.groupby(["attack", "norm"], sort=True).groups)
    panels = [p for p in panels if p[0] != WORST] + [p for p in panels if p[0] == WORST]
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
    order = corruption_order(cells["corruption"])
    cells = cells.iloc[np.lexsort((cells["severity"], [order.index(c) for c in cells["corruption"]]))]
    cols = list(zip(cells["corruption"], cells["severity"]))
    lambdas = sorted(fixed["lambda"].unique())
    labels = [f"λ = {lmbda:.3g}" for lmbda in lambdas]
    grid = [[_acc(fixed[fixed["lambda"] == lmbda], c, s) for c, s in cols] for lmbda in lambdas]
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
