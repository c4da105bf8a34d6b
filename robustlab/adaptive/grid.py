"""The lambda grids Algorithm 1 searches: the paper's, a default one from the training lambda, and parsing."""
from __future__ import annotations

import numpy as np

from robustlab.errors import RobustlabError
from robustlab.models.csc import MAX_LAMBDA

OFFICIAL_GRID = tuple(round(0.1 * k, 10) for k in range(1, 15))  # 0.1 .. 1.4, the paper's grid


def default_grid(train_lambda: float, n: int = 14, top: float = 3.0) -> tuple[float, ...]:
    """Geometric grid from the training lambda to `top` times it: where a model trained at lambda still works
    (design.md: a digits SDNet lost 5 points at 0.2 and 43 at 0.3 when trained at 0.1)."""
    return tuple(float(v) for v in np.geomspace(train_lambda, top * train_lambda, n))


def parse_grid(text: str, train_lambda: float) -> tuple[float, ...]:
    """'default', 'official', 'a:b:n' (evenly spaced), 'geom:a:b:n', or a comma list."""
    try:
        if text == "default":
            return default_grid(train_lambda)
        if text == "official":
            return OFFICIAL_GRID
        if text.startswith("geom:"):
            a, b, n = text[5:].split(":")
            values = np.geomspace(float(a), float(b), int(n))
        elif ":" in text:
            a, b, n = text.split(":")
            values = np.linspace(float(a), float(b), int(n))
        else:
            values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise RobustlabError(f"bad lambda grid {text!r}; write 0.1:1.4:14, geom:0.1:0.3:14, 0.1,0.2 or official") \
            from None
    if len(values) == 0 or not np.all(np.isfinite(values)) or (values < 0).any() or (values > MAX_LAMBDA).any():
        raise RobustlabError(f"lambda grid {text!r} must hold finite values in 0..{MAX_LAMBDA:g}; pass a grid such "
                             "as 0.1:1.4:14 or default")
    return tuple(float(round(v, 10)) for v in values)
