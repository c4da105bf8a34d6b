"""Algorithm 1 of the SDNet paper, as design.md defines it: lambda sweeps on synthetic noise, the lambda-residual
line, and test-time selection of lambda per test set or per image. One job per module: grid (the lambda grids),
residuals (one CSC layer's residuals at grid lambdas), calibration (the fitted line and its file), noise_sweep (the
calibration run), search (the rule, searched and certified), per_set and per_image (selection), module
(AdaptiveLambda). Nothing here reads a command's configuration or writes a report: `robustlab calibrate` lives in
robustlab/calibrate.py."""
from robustlab.adaptive.calibration import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    NOISE_LEVELS,
    NOISES,
    Calibration,
    Fit,
    best_lambdas,
    check_levels,
    fit_line,
    load_calibration,
)
from robustlab.adaptive.grid import OFFICIAL_GRID, default_grid, parse_grid
from robustlab.adaptive.module import AdaptiveLambda
from robustlab.adaptive.noise_sweep import CALIBRATION_SUITE, calibrate, calibration_levels, sweep
from robustlab.adaptive.per_image import PerImageSelection, select_per_image
from robustlab.adaptive.per_set import SetSelection, sample_mask, select_for_set, selection_bounds
from robustlab.adaptive.residuals import layer_input, layer_solver, residual_grid

__all__ = [
    "CALIBRATION_FORMAT", "CALIBRATION_SUITE", "CALIBRATION_VERSION", "NOISES", "NOISE_LEVELS", "OFFICIAL_GRID",
    "AdaptiveLambda", "Calibration", "Fit", "PerImageSelection", "SetSelection", "best_lambdas", "calibrate",
    "calibration_levels", "check_levels", "default_grid", "fit_line", "layer_input", "layer_solver",
    "load_calibration", "parse_grid", "residual_grid", "sample_mask", "select_for_set", "select_per_image",
    "selection_bounds", "sweep",
]
