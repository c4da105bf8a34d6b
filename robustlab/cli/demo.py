"""`robustlab demo`: its arguments and what it runs."""
from __future__ import annotations

import argparse

from robustlab.cli.arguments import Command, add_common, positive_int, print_records
from robustlab.demo import DEMOS, compact_table, run_demo


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=next(iter(DEMOS)), choices=list(DEMOS),
                   help=f"a built-in dataset (default {next(iter(DEMOS))})")
    p.add_argument("--n", type=positive_int, help="first N test images per cell (default "
                   f"{', '.join(f'{spec.default_n} on {name}' for name, spec in DEMOS.items())})")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--out", help="run directory (default runs/demo-<dataset>-<time>)")
    p.add_argument("--verbose", action="store_true", help="also print every row")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    result = run_demo(args.dataset, n=args.n, out=args.out, batch_size=args.batch_size, device=args.device,
                      quiet=args.quiet)
    if args.json or args.verbose:
        print_records(result.records, args.json)
        if args.json:
            return 0
    a, b = result.calibration_fit
    spec = DEMOS[args.dataset]
    print(f"{args.dataset}{' (built-in subset)' if args.dataset == 'fashion-mnist' else ''}: Algorithm 1 "
          f"calibrated {spec.models[0]} on gaussian noise: lambda = {a:.3g} * residual + {b:.3g}")
    print(compact_table(result.records, result.report.tables["worst-case"]).to_string(index=False))
    print("accuracy in %; corruptions: mean over the 15 benchmark corruptions x 5 severities; noise/blur/weather/"
          "digital: family means")
    print(f"results: {result.run.path / 'results.csv'}\nreport: {result.report.html}")
    return 0


COMMAND = Command("demo", help="the whole pipeline on built-in Fashion-MNIST (or digits) and shipped checkpoints",
                  epilog="example:\n  robustlab demo --out runs/demo",
                  arguments=arguments, run=run)
