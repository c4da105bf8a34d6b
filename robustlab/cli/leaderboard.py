"""`robustlab leaderboard`: its arguments and what it runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.cli.arguments import Command
from robustlab.errors import RobustlabError
from robustlab.reports.leaderboard import build_leaderboard


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (or results.csv files)")
    p.add_argument("--baseline", help="model (variant) whose errors normalize CE / mCE")
    p.add_argument("--out", required=True, help="the page to write (.html)")
    p.add_argument("--json", action="store_true", help="also print the board's rows as JSON")


def run(args: argparse.Namespace) -> int:
    if Path(args.out).suffix.lower() not in (".html", ".htm"):
        raise RobustlabError(f"--out {args.out} is not an .html file; pass a page name, e.g. --out board.html")
    board = build_leaderboard(args.runs, Path(args.out), baseline=args.baseline)
    if args.json:
        print(board.to_json(orient="records", indent=2))
    else:
        print(f"wrote {args.out}: {len(board)} rows")
    return 0


COMMAND = Command("leaderboard", help="one sortable HTML page: a row per model variant over any runs",
                  epilog="""examples:
  robustlab leaderboard runs/* --out board.html
  robustlab leaderboard runs/sdnet runs/resnet --baseline resnet18 --out reports/board.html""",
                  arguments=arguments, run=run)
