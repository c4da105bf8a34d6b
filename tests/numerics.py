"""Tolerances for two computation paths that are equal only to float rounding.

PyTorch picks its CPU kernels (oneDNN/MKL blocking, the instruction set, the thread count) per machine and per
shape, so two paths that compute the same formula (a forward and Algorithm 1's layer solver, a whole batch and a
chunk of it) add the same terms in different orders. Neither result is more right than the other; tests compare
them within the bound that reordering allows, never bit for bit. `.ci/run` runs the tests that use these bounds
under other kernel sets (ATEN_CPU_CAPABILITY) and thread counts.
"""
from __future__ import annotations

import torch

from robustlab.adaptive import Calibration
from robustlab.models import CSCConv2d

U32 = 2.0 ** -24  # float32 unit roundoff


def csc_path_rtol(layer: CSCConv2d) -> float:
    """Relative tolerance for a CSC layer's residual or code computed along two kernel paths.

    Each FISTA step applies the dictionary and its transpose: dot products of m = (C_in + C_out) * k * k terms,
    and two summation orders of m terms differ by at most about 2 m u relative to the sum of their magnitudes
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5 / 4.4). Errors of the n_steps steps
    and the final decode add up, hence (n_steps + 1) * 2 m u. Measured on one machine under the kernel sets
    `default` and `avx2`: at most 2.2 u on residuals and 1e-6..4e-6 of max |code| on codes, well inside.
    """
    m = (layer.in_channels + layer.out_channels) * layer.kernel_size ** 2
    return (layer.n_steps + 1) * 2 * m * U32


def assert_residuals_close(got: torch.Tensor, want: torch.Tensor, layer: CSCConv2d) -> None:
    """Residuals (sums of squares, so positive) equal to float rounding."""
    torch.testing.assert_close(got, want, rtol=csc_path_rtol(layer), atol=0)


def assert_codes_close(got: torch.Tensor, want: torch.Tensor, layer: CSCConv2d) -> None:
    """Codes equal to float rounding, measured against the largest coefficient: entries near the threshold are
    small differences of large terms, so a relative bound per entry would be meaningless."""
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=csc_path_rtol(layer) * max(scale, 1e-30))


def rule_choices(calib: Calibration, residuals: torch.Tensor, rtol: float) -> list[set[float]]:
    """Per column of (grid, N) residuals: every grid lambda Algorithm 1's rule could pick if each residual
    moved by up to rtol of itself. One lambda where the rule's decision is clear; two or more at a near-tie, where
    which of them wins depends on the residuals' last bits, and so on the kernels that computed them."""
    grid = torch.tensor(calib.grid, dtype=torch.float64).view(-1, 1)
    r = residuals.double().cpu()
    ends = torch.stack([calib.fit.predict(r * (1 - rtol)), calib.fit.predict(r * (1 + rtol))])
    low, high = ends.min(dim=0).values, ends.max(dim=0).values
    nearest = torch.maximum(low - grid, grid - high).clamp_min(0)  # smallest gap over the residual's range
    farthest = torch.maximum((grid - low).abs(), (grid - high).abs())
    can_win = nearest <= farthest.min(dim=0).values
    return [{float(grid[k]) for k in torch.nonzero(can_win[:, j]).view(-1).tolist()} for j in range(r.shape[1])]


def assert_rule_choice(chosen: torch.Tensor, calib: Calibration, residuals: torch.Tensor, rtol: float) -> int:
    """The chosen lambdas are the rule's on `residuals`, where the rule's decision is clear to within rtol of each
    residual, and one of the near-tied lambdas where it is not; returns how many columns were near-ties."""
    choices = rule_choices(calib, residuals, rtol)
    for j, (got, allowed) in enumerate(zip(chosen.tolist(), choices)):
        assert got in torch.tensor(sorted(allowed), dtype=chosen.dtype).tolist(), (j, got, sorted(allowed))
    return sum(len(a) > 1 for a in choices)
