"""Figures (PNG and SVG), drawn with matplotlib's non-interactive backend."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from robustlab.files import write_atomic  # noqa: E402


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
