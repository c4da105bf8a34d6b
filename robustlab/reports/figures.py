"""Figures (PNG and SVG), drawn with matplotlib's non-interactive backend."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig: "plt.Figure", stem: str | Path) -> list[Path]:
    """Write stem.png and stem.svg; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
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
