"""Algorithm 1 per image, keeping the CSC code at each image's lambda for the forward pass."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from robustlab.adaptive.calibration import Calibration
from robustlab.adaptive.residuals import layer_input
from robustlab.adaptive.search import GridSearch
from robustlab.models import RobustModel, csc_layer
from robustlab.models.csc import Presolved


@dataclass
class PerImageSelection:
    lambdas: torch.Tensor  # (N,) each image's grid lambda
    evaluations: int  # residuals (image, lambda) evaluated
    presolved: Presolved | None  # the CSC layer's output at each image's lambda, and its residual (None: not kept)


class _PerImageSearch(GridSearch):
    """The rule per image, keeping the CSC code at each image's current choice (see _ChosenCodes)."""

    def __init__(self, model: RobustModel, x: torch.Tensor, calib: Calibration) -> None:
        csc = csc_layer(model, calib.layer)
        inputs = layer_input(model, csc, x)
        super().__init__(calib, len(x), inputs.dtype, x.device)
        self.grid_solver = csc.solve_at(inputs, calib.grid)
        self.kept = _ChosenCodes(len(x), x.device)

    def residuals(self, rows: torch.Tensor, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, Any]]:
        return self.grid_solver(rows, index)

    def on_chunk(self, rows: torch.Tensor, index: torch.Tensor, payload: Any) -> None:
        self.kept.add(rows, index, self.choice(rows), payload)


def select_per_image(model: RobustModel, x: torch.Tensor, calib: Calibration) -> PerImageSelection:
    """Each image's grid lambda closest to a * r(lambda) + b (searched and certified as GridSearch says), how many
    residuals it evaluated, and the CSC layer's code and residual at the lambda selected (solved on the way, so that
    the forward at these lambdas need not solve the layer again)."""
    if not len(x):
        return PerImageSelection(torch.empty(0, device=x.device), 0, None)
    search = _PerImageSearch(model, x, calib)
    final = search.run()
    # a choice no evaluation made (a row of infinite gaps takes index 0, evaluated or not) has no code kept
    kept = torch.equal(final, search.kept.chosen)
    rows = torch.arange(len(x), device=x.device)
    presolved = Presolved(search.kept.gather(), search.known[rows, final]) if kept else None
    return PerImageSelection(search.grid[final], int(search.evaluated.sum()), presolved)


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
            # row copies by index: index_select is faster here than advanced indexing's general kernel
            out.index_copy_(0, mine, chunk.index_select(0, self.at_row[mine]))
        return out
