"""`robustlab calibrate`: load a checkpoint, run Algorithm 1's calibration (robustlab.adaptive), and write the
calibration JSON and its lambda-residual figure."""
from __future__ import annotations

import sys
from pathlib import Path

from robustlab.adaptive import Calibration, calibrate, parse_grid
from robustlab.checkpoints import load_model, model_digest, nonfinite_warning
from robustlab.config import CalibrateConfig
from robustlab.data import load_dataset
from robustlab.device import resolve_device
from robustlab.errors import RobustlabError
from robustlab.files import check_output
from robustlab.models import csc_layer
from robustlab.progress import progress_bars
from robustlab.reports.figures import lambda_residual_figure


def calibrate_checkpoint(cfg: CalibrateConfig) -> tuple[Calibration, list[Path]]:
    """`robustlab calibrate`: load, sweep, fit, and write the JSON and its figure (default: beside the JSON)."""
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
    calib = calibrate(model, model_digest(model), base, noise=cfg.noise, levels=cfg.levels, grid=grid,
                      n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, device=dev, layer=cfg.layer,
                      progress=progress_bars(cfg.quiet))
    out.parent.mkdir(parents=True, exist_ok=True)
    calib.save(out)
    return calib, lambda_residual_figure(calib, figure)
