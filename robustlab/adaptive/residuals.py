"""One CSC layer's reconstruction residuals at grid lambdas, running the model only up to that layer."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from robustlab.models import CSCConv2d, RobustModel, csc_layer
from robustlab.models.csc import GridSolver


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


def layer_solver(model: RobustModel, x: torch.Tensor, grid: Sequence[float], layer: int = 0) -> GridSolver:
    """One CSC layer's solver at grid lambdas (CSCConv2d.solve_at) on the pixels x: the layers before it run once."""
    csc = csc_layer(model, layer)
    with torch.no_grad():
        return csc.solve_at(layer_input(model, csc, x), grid)


def residuals_at(solve: GridSolver, n: int, index: Sequence[int]) -> torch.Tensor:
    """(len(index), n) residuals of all n images at the grid lambdas `index`, solved lambda-major."""
    pairs = solve(torch.arange(n).repeat(len(index)), torch.tensor(index, dtype=torch.long).repeat_interleave(n))
    return torch.cat([r for r, _ in pairs]).view(len(index), n)


def residual_grid(model: RobustModel, x: torch.Tensor, grid: Sequence[float], layer: int = 0) -> torch.Tensor:
    """(len(grid), N) residuals of one CSC layer at every grid lambda (only that layer runs per lambda): the array
    the exhaustive rule reads, which selection itself never builds whole."""
    return residuals_at(layer_solver(model, x, grid, layer), len(x), range(len(grid)))
