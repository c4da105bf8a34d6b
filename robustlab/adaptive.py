"""Algorithm 1 of the SDNet paper, as design.md defines it: lambda sweeps on synthetic noise, the
lambda-residual line, and test-time selection of lambda per test set or per image."""
from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch
import torch.nn as nn

from robustlab.config import MAX_LAMBDA, CalibrateConfig, check_levels
from robustlab.data import ImageSet, to_pixels
from robustlab.data.corrupted import GeneratedImageSet
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.models import CSCConv2d, RobustModel, csc_layer
from robustlab.models.csc import Given, Solver, restored
from robustlab.progress import ProgressFactory
from robustlab.schema import read_json_object

CALIBRATION_FORMAT = "robustlab-calibration"
CALIBRATION_VERSION = 1
NOISES = {"gaussian": "gaussian_noise", "shot": "shot_noise", "speckle": "speckle_noise", "impulse": "impulse_noise"}
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


class _Stop(Exception):
    pass


def layer_input(model: RobustModel, layer: CSCConv2d, x: torch.Tensor) -> torch.Tensor:
    """The input the CSC layer sees for pixels x (runs the model only up to that layer)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = inputs[0]
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["x"]


def layer_solver(model: RobustModel, x: torch.Tensor, grid: Sequence[float], layer: int = 0) -> Solver:
    """One CSC layer's solver at grid lambdas (CSCConv2d.solve_at) on the pixels x: the layers before it run once."""
    csc = csc_layer(model, layer)
    with torch.no_grad():
        return csc.solve_at(layer_input(model, csc, x), grid)


def _table(solve: Solver, n: int, index: Sequence[int]) -> torch.Tensor:
    """(len(index), n) residuals of all n images at the grid lambdas `index`, solved lambda-major."""
    pairs = solve(torch.arange(n).repeat(len(index)), torch.tensor(index, dtype=torch.long).repeat_interleave(n))
    return torch.cat([r for r, _ in pairs]).view(len(index), n)


def residual_grid(model: RobustModel, x: torch.Tensor, grid: Sequence[float], layer: int = 0) -> torch.Tensor:
    """(len(grid), N) residuals of one CSC layer at every grid lambda (only that layer runs per lambda): the table
    the exhaustive rule reads, which selection itself never builds whole."""
    return _table(layer_solver(model, x, grid, layer), len(x), range(len(grid)))


@dataclass
class Fit:
    a: float
    b: float
    r2: float

    def predict(self, residual: torch.Tensor | np.ndarray | float) -> torch.Tensor | np.ndarray | float:
        return self.a * residual + self.b


def fit_line(residuals: Sequence[float], lambdas: Sequence[float]) -> Fit:
    """Least-squares lambda = a * r + b, with R^2 (NaN when lambda does not vary)."""
    r, lmbda = np.asarray(residuals, dtype=np.float64), np.asarray(lambdas, dtype=np.float64)
    if len(r) < 2 or np.ptp(r) == 0 or np.ptp(lmbda) == 0:  # nothing to fit: a constant lambda
        return Fit(0.0, float(lmbda.mean()), math.nan)
    a, b = np.polyfit(r, lmbda, 1)
    ss_tot = float(((lmbda - lmbda.mean()) ** 2).sum())
    r2 = 1 - float(((lmbda - (a * r + b)) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return Fit(float(a), float(b), r2)


def best_lambdas(sweep: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Per noise level: lambda* = the most accurate grid lambda (ties: the smaller) and the residual there."""
    points = []
    for level in sorted({row["level"] for row in sweep}):
        rows = sorted((r for r in sweep if r["level"] == level), key=lambda r: (-r["accuracy"], r["lambda"]))
        points.append({"level": level, "lambda": rows[0]["lambda"], "residual": rows[0]["residual_mean"],
                       "accuracy": rows[0]["accuracy"]})
    return points


@dataclass
class Calibration:
    """The whole sweep, its per-level optima and the fitted line, tied to one checkpoint."""
    checkpoint_sha256: str
    arch: str
    layer: int
    noise: str
    grid: list[float]
    levels: list[float]
    sweep: list[dict[str, float]]
    points: list[dict[str, float]]
    fit: Fit
    calibration_split: str
    n: int
    seed: int
    format: str = CALIBRATION_FORMAT
    format_version: int = CALIBRATION_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from robustlab.files import write_json
        write_json(path, self.to_json())

    def select(self, residuals: torch.Tensor) -> torch.Tensor:
        """Per column of a (grid, N) residual table: the grid lambda closest to a * r(lambda) + b. At a near-tie
        (two lambdas' gaps equal to within the residuals' float rounding) the winner depends on the last bits of
        the residuals, which differ between CPUs and code paths: either tied lambda is then the rule's."""
        grid = torch.tensor(self.grid, dtype=residuals.dtype, device=residuals.device).view(-1, 1)
        gap = (grid - self.fit.predict(residuals)).abs()
        return grid.view(-1)[gap.argmin(dim=0)]  # argmin takes the first (smallest lambda) on ties


def load_calibration(path: str | Path, *, sha256: str | None = None) -> Calibration:
    """Read and validate a calibration file (format, non-empty sweep, and the checkpoint it belongs to)."""
    try:
        data = read_json_object(Path(path), "recalibrate with robustlab calibrate")
    except FileNotFoundError:
        raise RobustlabError(f"calibration file {path} does not exist; make one with robustlab calibrate") from None
    if data.get("format") != CALIBRATION_FORMAT:
        raise RobustlabError(f"{path} is not a robustlab calibration file (no format '{CALIBRATION_FORMAT}')")
    try:
        calib = Calibration(**{**data, "fit": Fit(**data["fit"])})
    except (TypeError, KeyError) as e:
        raise RobustlabError(f"{path} is a malformed calibration file ({e}); recalibrate") from None
    if not calib.sweep or not calib.grid or not calib.points:
        raise RobustlabError(f"{path} holds an empty sweep; recalibrate with robustlab calibrate")
    for part, keys in (("sweep", ("level", "lambda", "accuracy", "residual_mean")),
                       ("points", ("level", "lambda", "residual", "accuracy"))):
        rows = getattr(calib, part)
        for i, row in enumerate(rows if isinstance(rows, list) else [rows], start=1):
            values = row if isinstance(row, dict) else {}
            missing = [k for k in keys if type(values.get(k)) not in (int, float)]  # bool is no number here
            if missing:
                raise RobustlabError(f"{path}: {part} row {i} lacks {', '.join(missing)} (numbers); recalibrate "
                                     "with robustlab calibrate")
    grid = calib.grid if isinstance(calib.grid, list) else [calib.grid]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in grid):
        bad = next(v for v in grid if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v) and v >= 0))
        raise RobustlabError(f"{path}: lambda grid value {bad!r} is not a finite number >= 0; recalibrate with "
                             "robustlab calibrate")
    if not all(math.isfinite(v) for v in (calib.fit.a, calib.fit.b)):
        raise RobustlabError(f"{path} has a non-finite fit (a={calib.fit.a}, b={calib.fit.b}); recalibrate")
    if sha256 is not None and calib.checkpoint_sha256 != sha256:
        raise RobustlabError(f"{path} was calibrated for checkpoint {calib.checkpoint_sha256[:12]}, not this one "
                             f"({sha256[:12]}); calibrate this checkpoint with robustlab calibrate")
    return calib


def sweep(model: RobustModel, base: ImageSet, *, corruption: str, levels: Sequence[float], grid: Sequence[float],
          n: int, seed: int, batch_size: int, device: torch.device, layer: int,
          progress: ProgressFactory) -> list[dict[str, float]]:
    """Accuracy and mean residual of the CSC layer for every (noise level, grid lambda), each computed on its own."""
    csc = csc_layer(model, layer)
    rows = []
    with restored(csc):
        csc.record_residual = True
        for idx, level in enumerate(progress(levels, total=len(levels), desc=f"sweep {corruption}"), start=1):
            noisy = GeneratedImageSet(base, corruption, idx, table="cifar", seed=seed, param=level)
            batches = [(to_pixels(x, device), y.to(device)) for x, y in noisy.batches(batch_size, n)]
            for lmbda in grid:
                csc.lmbda = lmbda
                correct, residual, count = 0, 0.0, 0
                with torch.inference_mode():
                    for x, y in batches:
                        correct += int((model(x).argmax(1) == y).sum())
                        residual += float(csc.residual.double().sum())
                        count += len(y)
                rows.append({"level": float(level), "lambda": float(lmbda), "accuracy": correct / count,
                             "residual_mean": residual / count, "n": count})
    return rows


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


def selection_bounds(calib: Calibration, mean: Sequence[float], half: Sequence[float]) -> tuple[float, float]:
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
    def solvers() -> Iterator[tuple[Solver, int]]:
        for first, images in batches():
            if mask is not None:
                images = images[torch.from_numpy(mask[first:first + len(images)])]
            if len(images):
                yield layer_solver(model, to_pixels(images, device), calib.grid, calib.layer), len(images)

    sums = _SetSums(solvers, calib, shard)
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


class _SetSums:
    """A set's residual sums (and sums of squares) at grid lambdas, added up over its batches and the ranks: one
    pass over the batches per call of mean_at, solving the CSC layer only at the lambdas asked for. `batches()`
    yields, per batch, the layer's solver on it (CSCConv2d.solve_at) and its number of images."""

    def __init__(self, batches: Callable[[], Iterable[tuple[Solver, int]]], calib: Calibration,
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
        sums, count = torch.zeros(2, len(index), dtype=torch.float64), 0
        for solve, n in self.batches():
            r = _table(solve, n, index).double()
            sums += torch.stack([r.sum(dim=1), (r * r).sum(dim=1)]).cpu()
            count += n
        *added, count = self.shard.sum([*sums.view(-1).tolist(), count])
        if count == 0:
            raise RobustlabError("no images to select lambda on")
        if self.count and count != self.count:  # a mean mixing different images would select wrongly, silently
            raise RobustlabError(f"the set's passes read {self.count} and then {int(count)} images: selection needs "
                                 "the same batches on every pass")
        self.count = int(count)
        self.sum[index], self.sq[index], self.evaluated[index] = added[:len(index)], added[len(index):], True
        return self.sum[index] / self.count

    def search(self) -> float:
        """The rule's lambda for the set's mean residual, searched (_GridSearch) rather than over the whole grid."""
        return float(self.calib.grid[_MeanSearch(self.calib, self.mean_at).run()[0]])


INTERPOLATED_STEPS = 3  # of the search for the rule's lambda, before it bisects


class _GridSearch:
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

    Subclasses supply `solve`; `solved` sees each chunk once its residuals are recorded."""

    def __init__(self, calib: Calibration, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self.calib, self.n = calib, n
        self.known = torch.zeros((n, len(calib.grid)), dtype=dtype, device=device)  # the residuals evaluated so far
        self.evaluated = torch.zeros_like(self.known, dtype=torch.bool)
        self.grid = torch.tensor(calib.grid, dtype=dtype, device=device)  # as Calibration.select builds it

    def solve(self, rows: torch.Tensor, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, Any]]:
        """The residuals of rows at grid[index] (a pair per row), in chunks in order, each with what `solved` gets."""
        raise NotImplementedError

    def solved(self, rows: torch.Tensor, index: torch.Tensor, payload: Any) -> None:
        """Called per chunk of `solve`, after its residuals are recorded."""

    def choice(self, rows: torch.Tensor) -> torch.Tensor:
        """The rule's grid index per row over the lambdas evaluated so far."""
        gap = (self.grid - self.calib.fit.predict(self.known[rows])).abs()  # as Calibration.select computes
        # the rule's argmin over the whole row (ties and NaN as torch.argmin takes them); unevaluated ones cannot win
        return torch.where(self.evaluated[rows], gap, torch.full_like(gap, math.inf)).argmin(dim=1)

    def _gaps(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        missing = ~self.evaluated[rows, index]
        if bool(missing.any()):
            start, todo, at = 0, rows[missing], index[missing]
            for r, payload in self.solve(todo, at):
                some, where = todo[start:start + len(r)], at[start:start + len(r)]
                start += len(r)
                self.known[some, where], self.evaluated[some, where] = r.to(self.known.dtype), True
                self.solved(some, where, payload)
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


class _MeanSearch(_GridSearch):
    """The rule for one row: a set's mean residual, from a function of grid indices."""

    def __init__(self, calib: Calibration, mean_at: Callable[[Sequence[int]], np.ndarray]) -> None:
        super().__init__(calib, 1, torch.float64, torch.device("cpu"))
        self.mean_at = mean_at

    def solve(self, rows: torch.Tensor, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, Any]]:
        yield torch.from_numpy(np.asarray(self.mean_at(index.tolist()), dtype=np.float64)), None


@dataclass
class PerImageSelection:
    lambdas: torch.Tensor  # (N,) each image's grid lambda
    evaluations: int  # residuals (image, lambda) evaluated
    given: Given | None  # the CSC layer's output at each image's lambda, and its residual (None: not kept)


class _PerImageSearch(_GridSearch):
    """The rule per image, keeping the CSC code at each image's current choice (see _ChosenCodes)."""

    def __init__(self, model: RobustModel, x: torch.Tensor, calib: Calibration) -> None:
        csc = csc_layer(model, calib.layer)
        inputs = layer_input(model, csc, x)
        super().__init__(calib, len(x), inputs.dtype, x.device)
        self._solve = csc.solve_at(inputs, calib.grid)
        self.kept = _ChosenCodes(len(x), x.device)

    def solve(self, rows: torch.Tensor, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, Any]]:
        return self._solve(rows, index)

    def solved(self, rows: torch.Tensor, index: torch.Tensor, payload: Any) -> None:
        self.kept.add(rows, index, self.choice(rows), payload)


def select_per_image(model: RobustModel, x: torch.Tensor, calib: Calibration) -> PerImageSelection:
    """Each image's grid lambda closest to a * r(lambda) + b (searched and certified as _GridSearch says), how many
    residuals it evaluated, and the CSC layer's code and residual at the lambda selected (solved on the way, so that
    the forward at these lambdas need not solve the layer again)."""
    if not len(x):
        return PerImageSelection(torch.empty(0, device=x.device), 0, None)
    search = _PerImageSearch(model, x, calib)
    final = search.run()
    # a choice no evaluation made (a row of infinite gaps takes index 0, evaluated or not) has no code kept
    kept = torch.equal(final, search.kept.chosen)
    given = Given(search.kept.gather(), search.known[torch.arange(len(x), device=x.device), final]) if kept else None
    return PerImageSelection(search.grid[final], int(search.evaluated.sum()), given)


class _ChosenCodes:
    """The CSC code at each image's current choice, kept without a copy per change: a chunk of solve_at's output and
    a row in it. A lambda evaluated earlier that lost never wins later (its gap does not change), so a change of
    choice is always to a lambda of the chunk just solved. Chunks no image points to are let go, and the rest are
    merged into one tensor when they hold more than twice the batch (at most about three batches of codes)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.n = n
        self.chosen = torch.full((n,), -1, dtype=torch.long, device=device)  # grid index (-1: none yet)
        self.in_chunk = torch.full((n,), -1, dtype=torch.long, device=device)
        self.at_row = torch.zeros((n,), dtype=torch.long, device=device)
        self.chunks: dict[int, torch.Tensor] = {}
        self.numbers = itertools.count()

    def add(self, images: torch.Tensor, index: torch.Tensor, choice: torch.Tensor, codes: torch.Tensor) -> None:
        """A chunk just solved: its (image, grid index) pairs, each pair's image's choice now, and the codes."""
        won = choice == index  # at most one pair per image
        if bool(won.any()):
            key = next(self.numbers)
            self.chunks[key] = codes
            self.chosen[images[won]], self.in_chunk[images[won]] = index[won], key
            self.at_row[images[won]] = won.nonzero().view(-1)
            self._prune()

    def _prune(self) -> None:
        for key in set(self.chunks) - set(self.in_chunk.unique().tolist()):
            del self.chunks[key]
        if sum(len(c) for c in self.chunks.values()) > 2 * self.n:
            merged, key = self.gather(), next(self.numbers)
            self.chunks = {key: merged}
            self.in_chunk[self.in_chunk >= 0] = key
            self.at_row = torch.arange(self.n, device=self.at_row.device)

    def gather(self) -> torch.Tensor:
        """(n, ...) the codes at the current choices, in one tensor."""
        some = next(iter(self.chunks.values()))
        out = some.new_empty((self.n, *some.shape[1:]))
        for key, chunk in self.chunks.items():
            mine = (self.in_chunk == key).nonzero().view(-1)
            # row copies by index: index_select ran 3x faster here than advanced indexing's general kernel
            out.index_copy_(0, mine, chunk.index_select(0, self.at_row[mine]))
        return out


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


class AdaptiveLambda(nn.Module):
    """A model whose CSC layer takes, per batch, the lambda Algorithm 1 selects: per image, or one for the batch.

    Selection is not differentiable; gradients pass straight through it (BPDA with the identity), so an
    attack on this module attacks the whole pipeline, selection included.
    """

    def __init__(self, model: RobustModel, calib: Calibration, *, per_image: bool) -> None:
        super().__init__()
        self.model, self.calib, self.per_image = model, calib, per_image
        self.config, self.name = model.config, model.name
        self.last_lambdas: torch.Tensor | None = None
        self.train(model.training)  # a wrapper of an eval-mode model is in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            given = None
            if self.per_image:
                chosen = select_per_image(self.model, x.detach(), self.calib)
                lambdas, given = chosen.lambdas.to(x.dtype), chosen.given
            else:
                solve = layer_solver(self.model, x.detach(), self.calib.grid, self.calib.layer)  # for every pass
                lambdas = x.new_full((len(x),), _SetSums(lambda: [(solve, len(x))], self.calib).search())
        self.last_lambdas = lambdas
        with restored(csc_layer(self.model, self.calib.layer)) as csc:
            csc.lmbda = lambdas
            if not torch.is_grad_enabled():  # a gradient needs the layer solved in the graph; an evaluation does not
                csc.given = given
            return self.model(x)


CALIBRATION_SUITE = "noise-calibration"  # the official script's levels (design.md)


def calibration_levels(noise: str, suite: str = CALIBRATION_SUITE) -> list[float]:
    """The levels a suite (a name or a file) lists for a noise family."""
    from robustlab.corruptions.suites import load_corruption_suite
    loaded = load_corruption_suite(suite)
    levels = [c.param for c in loaded.cells if c.corruption == NOISES[noise] and c.param is not None]
    check_levels(noise, tuple(levels), what=f"suite {suite}: {NOISES[noise]} level")
    if not levels:
        raise RobustlabError(f"suite {suite} lists no levels for {NOISES[noise]}; give a suite with a [levels] "
                             f"entry for it, or numbers (--levels 0.02,0.1)")
    return [float(v) for v in levels]


def calibrate(model: RobustModel, sha256: str, base: ImageSet, *, noise: str, levels: Sequence[float] | str | None,
              grid: Sequence[float], n: int, seed: int, batch_size: int, device: torch.device, layer: int,
              progress: ProgressFactory) -> Calibration:
    """Algorithm 1's fit on calibration images: the sweep, lambda* per level, and the least-squares line."""
    if noise not in NOISES:
        raise RobustlabError(f"unknown noise {noise!r}; use one of {', '.join(NOISES)}")
    if isinstance(levels, str) or not levels:
        levels = calibration_levels(noise, levels or CALIBRATION_SUITE)
    rows = sweep(model, base, corruption=NOISES[noise], levels=levels, grid=grid, n=n, seed=seed,
                 batch_size=batch_size, device=device, layer=layer, progress=progress)
    points = best_lambdas(rows)
    line = fit_line([p["residual"] for p in points], [p["lambda"] for p in points])
    return Calibration(checkpoint_sha256=sha256, arch=model.config.arch, layer=layer, noise=noise, grid=list(grid),
                       levels=[float(v) for v in levels], sweep=rows, points=points, fit=line,
                       calibration_split=f"{base.name}/{base.split}", n=min(n, len(base)), seed=seed)


def calibrate_checkpoint(cfg: CalibrateConfig) -> tuple[Calibration, list[Path]]:
    """`robustlab calibrate`: load, sweep, fit, and write the JSON and its figure (default: beside the JSON)."""
    from robustlab.checkpoints import load_model, nonfinite_warning, sha256_file
    from robustlab.data import load_dataset
    from robustlab.device import resolve_device
    from robustlab.files import check_output
    from robustlab.progress import progress_bars
    from robustlab.reports.figures import lambda_residual_figure

    out = Path(cfg.out)
    if not str(cfg.out).strip() or out.is_dir():
        raise RobustlabError(f"--out {str(cfg.out)!r} must name a calibration JSON file, not a directory")
    figure = Path(cfg.figure) if cfg.figure else out.with_suffix("")
    outputs = (out, figure.with_suffix(".png"), figure.with_suffix(".svg"))
    if not cfg.overwrite:
        existing = [p for p in outputs if p.exists() or p.is_symlink()]
        if existing:
            raise RobustlabError(f"{existing[0]} exists; pass --overwrite to replace it, or another --out")
    for p in outputs:  # all three, before the sweep: a refusal after it would lose it, or replace the JSON alone
        check_output(p, root=p.parent, what="--out")
    dev = resolve_device(cfg.device)
    model = load_model(cfg.ckpt, arch=cfg.arch, device=dev, official_config=cfg.official_config)
    for line in (nonfinite_warning(model, "the sweep's accuracies and residuals, and so the fit, mean nothing"),
                 model.csc_settings and model.csc_settings.notice(model.name)):
        if line:
            print(f"robustlab: {line}", file=sys.stderr)
    grid = parse_grid(cfg.lambdas, float(csc_layer(model, cfg.layer).lmbda))
    base = load_dataset(cfg.dataset, cfg.data_dir, cfg.split)
    calib = calibrate(model, sha256_file(model.checkpoint_path), base, noise=cfg.noise, levels=cfg.levels, grid=grid,
                      n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, device=dev, layer=cfg.layer,
                      progress=progress_bars(cfg.quiet))
    out.parent.mkdir(parents=True, exist_ok=True)
    calib.save(out)
    return calib, lambda_residual_figure(calib, figure)
