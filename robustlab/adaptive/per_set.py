"""Algorithm 1 per test set: the set's mean residual, on every image or a seeded sample with bounds."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.stats
import torch

from robustlab.adaptive.calibration import Calibration
from robustlab.adaptive.residuals import layer_solver, residuals_at
from robustlab.adaptive.search import MeanSearch
from robustlab.data import to_pixels
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.models import RobustModel
from robustlab.models.csc import GridSolver

SELECTION_CONFIDENCE = 0.95  # of the bounds, simultaneous over the grid (Bonferroni)


@dataclass(frozen=True)
class SetSelection:
    """Algorithm 1's lambda for a test set, chosen from `n` of its `total` images, and the smallest and largest grid
    lambda the whole set could give at 95% confidence (both equal to `lmbda` when every image was used)."""
    lmbda: float
    low: float
    high: float
    n: int
    total: int


def sample_mask(total: int, n: int | None, seed: int) -> np.ndarray | None:
    """Which of a set's images per-set selection reads: a seeded sample of n of them (None: all). The same on every
    rank and for every worker count."""
    if n is None or n >= total:
        return None
    mask = np.zeros(total, dtype=bool)
    mask[np.random.default_rng([seed, total]).choice(total, size=n, replace=False)] = True
    return mask


def selection_bounds(calib: Calibration, mean: npt.ArrayLike, half: npt.ArrayLike) -> tuple[float, float]:
    """The smallest and largest grid lambda the rule selects when each grid lambda's residual may be anywhere in
    mean +- half. Grid lambda g is selectable iff its smallest possible gap |g - (a r + b)| is at most every other
    lambda's largest possible gap (the residuals at different lambdas vary independently within the box)."""
    grid = np.asarray(calib.grid, dtype=np.float64)
    m, h = np.asarray(mean, dtype=np.float64), np.asarray(half, dtype=np.float64)
    ends = np.stack([calib.fit.predict(m - h), calib.fit.predict(m + h)])
    lowest, highest = ends.min(axis=0), ends.max(axis=0)
    min_gap = np.maximum(0.0, np.maximum(lowest - grid, grid - highest))
    max_gap = np.maximum(np.abs(grid - lowest), np.abs(grid - highest))
    possible = grid[min_gap <= max_gap.min()]
    return float(possible.min()), float(possible.max())


def select_for_set(model: RobustModel, batches: Callable[[], Iterable[tuple[int, torch.Tensor]]], calib: Calibration,
                   device: torch.device, *, total: int, mask: np.ndarray | None = None,
                   shard: Shard = Shard()) -> SetSelection:
    """The paper's setting: r(lambda) = the set's mean residual at each grid lambda; the consistent grid lambda.
    `batches()` yields (index of the first image, images), once per pass over the set; with a `mask` only its images
    count, and the bounds carry the sample's standard error (finite-population corrected). Without one the rule's
    lambda is searched as per image (a few passes, each at one or a few lambdas, instead of the whole grid). Under
    torchrun `batches` are this rank's, and the sums are added up over the ranks (every rank searches alike)."""
    def solvers() -> Iterator[tuple[GridSolver, int]]:
        for first, images in batches():
            if mask is not None:
                images = images[torch.from_numpy(mask[first:first + len(images)])]
            if len(images):
                yield layer_solver(model, to_pixels(images, device), calib.grid, calib.layer), len(images)

    sums = SetSums(solvers, calib, shard)
    size = len(calib.grid)
    if mask is None:
        lmbda = sums.search()
        if sums.count >= total:
            return SetSelection(lmbda, lmbda, lmbda, sums.count, total)
    sums.mean_at((~sums.evaluated).nonzero()[0].tolist())  # a sample's bounds need the whole grid
    count, mean = sums.count, sums.sum / sums.count
    lmbda = float(calib.select(torch.tensor(mean, dtype=torch.float64).view(-1, 1))[0])
    if count >= total:
        return SetSelection(lmbda, lmbda, lmbda, count, total)
    if count < 2:  # no spread to estimate: anything on the grid
        return SetSelection(lmbda, min(calib.grid), max(calib.grid), count, total)
    var = np.maximum(0.0, (sums.sq - count * mean ** 2) / (count - 1))
    se = np.sqrt(var / count * (total - count) / (total - 1))
    z = float(scipy.stats.norm.ppf(1 - (1 - SELECTION_CONFIDENCE) / (2 * size)))
    low, high = selection_bounds(calib, mean, z * se)
    return SetSelection(lmbda, min(low, lmbda), max(high, lmbda), count, total)


class SetSums:
    """A set's residual sums (and sums of squares) at grid lambdas, added up over its batches and the ranks: one
    pass over the batches per call of mean_at, solving the CSC layer only at the lambdas asked for. `batches()`
    yields, per batch, the layer's solver on it (CSCConv2d.solve_at) and its number of images."""

    def __init__(self, batches: Callable[[], Iterable[tuple[GridSolver, int]]], calib: Calibration,
                 shard: Shard = Shard()) -> None:
        self.batches, self.calib, self.shard = batches, calib, shard
        self.sum = np.zeros(len(calib.grid))
        self.sq = np.zeros(len(calib.grid))
        self.evaluated = np.zeros(len(calib.grid), dtype=bool)
        self.count = 0

    def mean_at(self, index: Sequence[int]) -> np.ndarray:
        """The set's mean residual at grid lambdas `index` (float64)."""
        index = list(index)
        if not index:
            return np.empty(0)
        sums, images = torch.zeros(2, len(index), dtype=torch.float64), 0
        for solve, n in self.batches():
            r = residuals_at(solve, n, index).double()
            sums += torch.stack([r.sum(dim=1), (r * r).sum(dim=1)]).cpu()
            images += n
        *added, count = self.shard.sum([*sums.view(-1).tolist(), images])
        if count == 0:
            raise RobustlabError("no images to select lambda on")
        if self.count and count != self.count:  # a mean mixing different images would select wrongly, silently
            raise RobustlabError(f"the set's passes read {self.count} and then {int(count)} images: selection needs "
                                 "the same batches on every pass")
        self.count = int(count)
        self.sum[index], self.sq[index], self.evaluated[index] = added[:len(index)], added[len(index):], True
        return self.sum[index] / self.count

    def search(self) -> float:
        """The rule's lambda for the set's mean residual, searched (GridSearch) rather than over the whole grid."""
        return float(self.calib.grid[MeanSearch(self.calib, self.mean_at).run()[0]])
