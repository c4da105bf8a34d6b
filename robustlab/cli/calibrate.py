"""`robustlab calibrate`: its arguments and what it runs."""
from __future__ import annotations

import argparse
import json

from robustlab.adaptive import NOISES
from robustlab.calibrate import calibrate_checkpoint
from robustlab.cli.arguments import Command, add_common, add_data, add_official_config, levels, positive_int
from robustlab.config import CalibrateConfig


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True)
    p.add_argument("--arch", help="architecture, when the checkpoint does not say (robustlab list models)")
    add_official_config(p)
    add_data(p)
    p.add_argument("--split", default="train", help="calibration split (default train)")
    p.add_argument("--noise", default="gaussian", choices=list(NOISES), help="the synthetic noise family")
    p.add_argument("--levels", type=levels, help="noise levels (0.02,0.1,...) or a suite that lists them "
                   "(default noise-calibration: the official script's levels; noise-calibration-fine: twice as fine)")
    p.add_argument("--lambdas", default="default", help="grid: default (geometric, training lambda to 3x), "
                                                        "official (0.1..1.4), 0.1:1.4:14, geom:a:b:n or a list")
    p.add_argument("--layer", type=int, default=0, help="which CSC layer's lambda adapts (default the first)")
    p.add_argument("--n", type=positive_int, default=500, help="calibration images (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--out", required=True, help="calibration JSON (a figure is written beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its figure)")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    calib, figures = calibrate_checkpoint(CalibrateConfig.from_cli(args))
    if args.json:
        print(json.dumps(calib.to_json(), indent=2))
        return 0
    print(f"calibrated on {calib.n} images of {calib.calibration_split} ({args.noise} noise)")
    for p in calib.points:
        print(f"  level {p['level']:<6g} best lambda {p['lambda']:<8.4g} residual {p['residual']:.4g} "
              f"accuracy {100 * p['accuracy']:.1f}%")
    print(f"fit: lambda = {calib.fit.a:.4g} * r + {calib.fit.b:.4g} (R^2 {calib.fit.r2:.3f})")
    print(f"wrote {args.out} and {', '.join(str(f) for f in figures)}")
    return 0


COMMAND = Command("calibrate", help="Algorithm 1: fit lambda against the CSC residual on synthetic noise",
                  epilog="""examples:
  robustlab calibrate --ckpt zoo:sdnet18-digits --dataset digits --out calib.json
  robustlab calibrate --ckpt sdnet18.pth.tar --dataset cifar10 --data-dir D --noise shot --lambdas official --out c.json
the calibration images come from the train split (disjoint from the test images) unless --split says otherwise""",
                  arguments=arguments, run=run)
