"""`robustlab metrics`: its arguments and what it runs."""
from __future__ import annotations

import argparse

from robustlab.cli.arguments import Command
from robustlab.reports.metrics import corruption_summary, read_all, resolve_baseline
from robustlab.reports.paired import worst_case
from robustlab.reports.runs import load_runs, outcome_loader


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results.csv files or run directories")
    p.add_argument("--baseline", help="model name (or results file) whose errors normalize CE")
    p.add_argument("--alexnet", action="store_true", help="also ImageNet-C mCE normalized by AlexNet's errors")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    df = read_all(args.results)
    baseline = resolve_baseline(args.baseline)
    table = corruption_summary(df, baseline=baseline, alexnet=args.alexnet)
    runs, _, _ = load_runs(args.results)
    worst = worst_case(runs.assign(variant=runs["base_variant"]), outcome_loader())
    if args.json:
        table["worst_case"] = [worst[worst["variant"] == m].drop(columns="variant").to_dict("records")
                               for m in table["model"]]
        print(table.to_json(orient="records", indent=2))
        return 0
    print(table.to_string(index=False, float_format="%.4f"))
    if len(worst):
        print("\nrobust accuracy under every attack (worst case):")
        print(worst.to_string(index=False, float_format="%.4f"))
    return 0


COMMAND = Command("metrics", help="mean corruption accuracy, mCE and relative mCE of result files",
                  epilog="""examples:
  robustlab metrics runs/sdnet runs/resnet --baseline resnet18
  robustlab metrics runs/in-c/results.csv --alexnet""",
                  arguments=arguments, run=run)
