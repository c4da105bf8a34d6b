"""`robustlab regress`: its arguments and what it runs."""
from __future__ import annotations

import argparse

from robustlab.cli.arguments import Command
from robustlab.regress import CORRECTIONS, compare, exit_code, regress
from robustlab.schema import read_results


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("baseline", help="baseline results.csv (or run directory)")
    p.add_argument("current", help="current results.csv (or run directory)")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points a cell may lose (default 1.0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--correction", choices=CORRECTIONS, default="none",
                   help="holm: adjust the cells' p-values so that any false alarm over all cells has chance < alpha")
    p.add_argument("--json", action="store_true", help="every matched cell as JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    if not args.json:
        return regress(args.baseline, args.current, max_drop=args.max_drop, alpha=args.alpha,
                       correction=args.correction)
    result = compare(read_results(args.baseline), read_results(args.current), max_drop=args.max_drop,
                     alpha=args.alpha, correction=args.correction)
    print(result.to_json())
    return exit_code(result)


COMMAND = Command("regress", help="CI gate: fail on a significant drop of any cell's accuracy",
                  epilog="""examples:
  robustlab regress reports/baseline.csv runs/ci/results.csv
  robustlab regress base.csv new.csv --max-drop 2 --alpha 0.01
exit 0: no cell dropped by more than --max-drop points with one-sided p < --alpha (exact McNemar where both
files carry per-image outcomes of the same images, else the two-proportion z-test; the table names which);
exit 1: some did (listed); exit 2: a baseline cell is missing (or has n = 0) or the files' schemas differ""",
                  arguments=arguments, run=run)
