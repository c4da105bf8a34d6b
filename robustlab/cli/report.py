"""`robustlab report`: its arguments and what it runs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robustlab.cli.arguments import Command
from robustlab.reports.report import build_report


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (or results.csv files)")
    p.add_argument("--baseline", help="model (variant) whose errors normalize CE / mCE")
    p.add_argument("--out", required=True, help="directory for report.md, report.html and figures")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    files = build_report([Path(d) for d in args.runs], Path(args.out), baseline=args.baseline)
    if args.json:
        print(json.dumps({"markdown": str(files.markdown), "html": str(files.html),
                          "figures": [str(f) for f in files.figures], "warnings": files.warnings}, indent=2))
        return 0
    for w in files.warnings:
        print(f"robustlab: warning: {w}", file=sys.stderr)
    print(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figure files")
    return 0


COMMAND = Command("report", help="compare runs: Markdown and HTML tables, PNG/SVG figures",
                  epilog="""examples:
  robustlab report runs/sdnet runs/resnet --baseline resnet18 --out reports/cmp
  robustlab report runs/demo-20261122-1200 --out /tmp/demo-report   # then open /tmp/demo-report/report.html""",
                  arguments=arguments, run=run)
