"""Algorithm 1's rule searched rather than evaluated on the whole grid, and certified."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from robustlab.adaptive.calibration import Calibration, Fit

INTERPOLATED_STEPS = 3  # of the search for the rule's lambda, before it bisects


class GridSearch:
    """Algorithm 1's rule for n rows (images, or a whole set) whose residuals are evaluated on demand: each row's
    grid lambda closest to a * r(lambda) + b, evaluating r at a few lambdas instead of the whole grid.

    The rule picks where d(lambda) = lambda - (a r(lambda) + b) is closest to zero. A search for d's sign change
    (the two ends, then the grid lambda where the line through d at the bracket's ends crosses zero, at most
    INTERPOLATED_STEPS times and ending early when that lambda is within half a grid step of the crossing, then
    bisection) is then certified, per row, from the residual growing with lambda: an unevaluated lambda's residual
    lies between those evaluated on either side of it, which bounds its |d| from below. Lambdas whose bound does not
    exceed the best |d| found are evaluated too (the outermost below and above first, then all still uncertain),
    until none is left (all of a row's lambdas when its evaluated residuals do not grow or are not finite, and
    every lambda of a grid that is not ascending). So the lambdas are always the exhaustive rule's (tested on real
    images against it); where d is monotone few extra lambdas are needed, where it is not up to the whole grid. One
    exception: a residual that is NaN at a lambda never evaluated (and finite at those evaluated) is not seen, where
    the exhaustive rule's argmin would pick that NaN.

    Subclasses supply `residuals`; `on_chunk` sees each chunk once its residuals are recorded."""

    def __init__(self, calib: Calibration, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self.calib, self.n = calib, n
        self.known = torch.zeros((n, len(calib.grid)), dtype=dtype, device=device)  # the residuals evaluated so far
        self.evaluated = torch.zeros_like(self.known, dtype=torch.bool)
        self.grid = torch.tensor(calib.grid, dtype=dtype, device=device)  # as Calibration.select builds it

    def residuals(self, rows: torch.Tensor, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, Any]]:
        """The residuals of rows at grid[index] (a pair per row), in chunks in order, each with what `on_chunk` gets."""
        raise NotImplementedError

    def on_chunk(self, rows: torch.Tensor, index: torch.Tensor, payload: Any) -> None:
        """Called per chunk of `residuals`, after they are recorded."""

    def choice(self, rows: torch.Tensor) -> torch.Tensor:
        """The rule's grid index per row over the lambdas evaluated so far."""
        gap = (self.grid - self.calib.fit.predict(self.known[rows])).abs()  # as Calibration.select computes
        # the rule's argmin over the whole row (ties and NaN as torch.argmin takes them); unevaluated ones cannot win
        return torch.where(self.evaluated[rows], gap, torch.full_like(gap, math.inf)).argmin(dim=1)

    def _gaps(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        missing = ~self.evaluated[rows, index]
        if bool(missing.any()):
            start, todo, at = 0, rows[missing], index[missing]
            for r, payload in self.residuals(todo, at):
                some, where = todo[start:start + len(r)], at[start:start + len(r)]
                start += len(r)
                self.known[some, where], self.evaluated[some, where] = r.to(self.known.dtype), True
                self.on_chunk(some, where, payload)
        return self.grid[index] - self.calib.fit.predict(self.known[rows, index])

    def run(self) -> torch.Tensor:
        """(n,) each row's grid index under the rule."""
        n, size, device = self.n, len(self.calib.grid), self.known.device
        everyone = torch.arange(n, device=device)
        grid = self.calib.grid
        ascending = all(u < v for u, v in zip(grid, grid[1:]))
        if ascending:
            ends = torch.tensor([0, size - 1] if size > 1 else [0], device=device)
            d = self._gaps(everyone.repeat(len(ends)), ends.repeat_interleave(n))  # both in one call: one pass
            first, last = d[:n], d[-n:]
            # the first grid index where d >= 0 (size: none), were d increasing; the ends are known: search between
            lo = torch.where(first >= 0, 0, torch.where(last < 0, size, 1))
            hi = torch.where(first >= 0, 0, torch.where(last < 0, size, size - 1))
            lambdas = self.grid.double()
            for step in itertools.count():
                active = (lo < hi).nonzero().view(-1)
                if not len(active):
                    break
                low, high = lo[active], hi[active]
                if step < INTERPOLATED_STEPS:
                    # the grid lambda where the line through d at the bracket's ends (both evaluated: d < 0 at
                    # low - 1, d >= 0 at high) crosses zero; exact when r is linear in lambda
                    left, right = self._gaps(active, low - 1).double(), self._gaps(active, high).double()
                    share = (-left / (right - left)).nan_to_num(0.5).clamp(0, 1)
                    crossing = lambdas[low - 1] + share * (lambdas[high] - lambdas[low - 1])
                    mid = torch.searchsorted(lambdas, crossing).clamp(min=low, max=high - 1)
                    slope = (right - left) / (lambdas[high] - lambdas[low - 1])
                else:  # then bisection, so that a d far from a line costs log2(grid) steps more at most
                    mid = (low + high) // 2
                d_mid = self._gaps(active, mid)
                up = d_mid >= 0
                hi[active[up]], lo[active[~up]] = mid[up], mid[~up] + 1
                if step < INTERPOLATED_STEPS:
                    # landed within half a grid step of where the line crosses: certification takes over (the
                    # lambdas either side are bounded from further out, which spares evaluating them)
                    step_width = lambdas[(mid + 1).clamp(max=size - 1)] - lambdas[(mid - 1).clamp(min=0)]
                    close = d_mid.double().abs() <= slope * step_width / 4
                    lo[active[close]] = hi[active[close]]
        for round_ in itertools.count():
            uncertain = ~self.evaluated
            if ascending:
                uncertain = _uncertain(self.known, self.evaluated, self.grid, self.calib.fit)
                if round_ == 0:  # then everything still uncertain at once: a few rounds (passes over a set) at most
                    uncertain = _outermost(uncertain, self.choice(everyone))
            rows, index = uncertain.nonzero(as_tuple=True)
            if not len(rows):
                break
            self._gaps(rows, index)
        return self.choice(everyone)


class MeanSearch(GridSearch):
    """The rule for one row: a set's mean residual, from a function of grid indices."""

    def __init__(self, calib: Calibration, mean_at: Callable[[Sequence[int]], np.ndarray]) -> None:
        super().__init__(calib, 1, torch.float64, torch.device("cpu"))
        self.mean_at = mean_at

    def residuals(self, rows: torch.Tensor, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, Any]]:
        yield torch.from_numpy(np.asarray(self.mean_at(index.tolist()), dtype=np.float64)), None


def _uncertain(known: torch.Tensor, evaluated: torch.Tensor, grid: torch.Tensor, fit: Fit) -> torch.Tensor:
    """(n, grid) the unevaluated lambdas that could still beat an image's best evaluated |d|: their |d| bound,
    from a residual between those of the evaluated neighbours (r grows with lambda), is not above the best. An
    image whose evaluated residuals do not grow, or are not finite, has every unevaluated lambda uncertain."""
    r = known.double()
    g = grid.double().view(1, -1)
    below = torch.where(evaluated, r, torch.full_like(r, -math.inf)).cummax(dim=1).values
    above = torch.where(evaluated, r, torch.full_like(r, math.inf)).flip(1).cummin(dim=1).values.flip(1)
    finite = (torch.isfinite(r) | ~evaluated).all(dim=1, keepdim=True)
    growing = (torch.where(evaluated, r, below) >= below).all(dim=1, keepdim=True)
    ends = torch.stack([g - fit.predict(below), g - fit.predict(above)])
    low, high = ends.min(dim=0).values, ends.max(dim=0).values
    bound = torch.where((low <= 0) & (high >= 0), torch.zeros_like(low), torch.minimum(low.abs(), high.abs()))
    best = torch.where(evaluated, (g - fit.predict(r)).abs(), torch.full_like(r, math.inf)).min(dim=1).values
    # the rule compares gaps rounded in the residuals' dtype; these bounds are float64: a margin of a few roundings
    scale = g.abs() + abs(fit.a) * torch.maximum(below.abs(), above.abs()).nan_to_num(0, 0, 0) + abs(fit.b)
    margin = 4 * torch.finfo(known.dtype).eps * scale
    return ~evaluated & (~finite | ~growing | (bound <= best.view(-1, 1) + margin))


def _outermost(uncertain: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Of each row's uncertain lambdas, the farthest below and the farthest above its current choice: evaluated,
    they bound the residuals of those between more tightly, which often certifies them without evaluating them
    (uncertainty only shrinks as evaluations are added, so this never costs more evaluations than all at once)."""
    size = uncertain.shape[1]
    index = torch.arange(size, device=uncertain.device).view(1, -1)
    below, above = uncertain & (index < choice.view(-1, 1)), uncertain & (index > choice.view(-1, 1))
    picked = torch.zeros_like(uncertain)
    rows = below.any(dim=1).nonzero().view(-1)
    picked[rows, below[rows].int().argmax(dim=1)] = True  # the first (lowest) uncertain below
    rows = above.any(dim=1).nonzero().view(-1)
    picked[rows, size - 1 - above[rows].flip(1).int().argmax(dim=1)] = True  # the last (highest) above
    return picked
