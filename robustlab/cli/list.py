"""`robustlab list`: its arguments and what it runs."""
from __future__ import annotations

import argparse
import json
from typing import Callable

from robustlab.attacks import ATTACKS
from robustlab.checkpoints import zoo_names
from robustlab.cli.arguments import Command
from robustlab.corruptions import BENCHMARK, CORRUPTIONS
from robustlab.corruptions.engine import KIND_SUMMARY
from robustlab.data import DATASETS
from robustlab.models import ARCHS
from robustlab.suites import suite_names

# what `robustlab list WHAT` prints: (name, summary) rows, each read from its registry
LISTINGS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "models": lambda: [(n, s.summary) for n, s in ARCHS.items()] +
                      [("torchvision:NAME / timm:NAME", "any torchvision or timm architecture")],
    "datasets": lambda: [(n, s.summary) for n, s in DATASETS.items()],
    "zoo": lambda: [(f"zoo:{n}", "shipped checkpoint") for n in zoo_names()],
    "corruptions": lambda: [(n, f"{c.family}{'' if n in BENCHMARK else ' (extra)'}, "
                                f"{KIND_SUMMARY[c.kind]}{'; batched torch on GPU' if c.on_accelerator else ''}")
                            for n, c in CORRUPTIONS.items()],
    "attacks": lambda: [(n, f"{'white-box' if e.white_box else 'black-box'}, {'/'.join(e.norms)}: {e.summary}")
                        for n, e in ATTACKS.items()],
    "suites": lambda: [(f"corruptions/{n}", "corruption suite") for n in suite_names("corruptions")] +
                      [(f"attacks/{n}", "attack suite") for n in suite_names("attacks")],
}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=list(LISTINGS))
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    rows = LISTINGS[args.what]()
    if args.json:
        print(json.dumps([{"name": n, "summary": s} for n, s in rows], indent=2))
        return 0
    width = max(len(n) for n, _ in rows)
    print("\n".join(f"{n.ljust(width)}  {s}" for n, s in rows))
    return 0


COMMAND = Command("list", help=f"list what robustlab knows: {', '.join(LISTINGS)}",
                  epilog="example: robustlab list models",
                  arguments=arguments, run=run)
