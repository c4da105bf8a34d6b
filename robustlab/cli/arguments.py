"""What every command shares: argument types, the one-line usage error, common flags, printing records, and the
Command record each command module exports."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Callable, NoReturn

from robustlab.config import ALL_IMAGES
from robustlab.data import DATASETS
from robustlab.reports import records_table

EXIT_BAD_INPUT = 2
Arguments = argparse._ActionsContainer  # a parser or an argument group: both take add_argument


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help and examples, the arguments it takes and what it runs."""
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None
    formatter_class: type[argparse.HelpFormatter] = argparse.RawDescriptionHelpFormatter


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line too (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def select_n(text: str) -> int | str:
    return ALL_IMAGES if text == ALL_IMAGES else positive_int(text)


def severities(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected severities like 1,3,5, got {text!r}") from None
    if not values or any(v not in (1, 2, 3, 4, 5) for v in values):
        raise argparse.ArgumentTypeError(f"severities must be in 1..5, got {text!r}")
    return values


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.02,0.1, got {text!r}") from None


def levels(text: str) -> list[float] | str:
    """Noise levels as numbers, or the name (or file) of a suite that lists them."""
    return text if not text[:1].isdigit() and not text.startswith(".") else floats(text)


def add_common(p: Arguments) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result records as JSON instead of a table")


def add_official_config(p: Arguments) -> None:
    p.add_argument("--official-config", metavar="FILE.yaml",
                   help="the official SDNet experiment configuration an official checkpoint was trained with (its "
                        "FISTA steps, mu, lambda, ...); default: a YAML file of the checkpoint's stem beside it, "
                        "else the official defaults (the manifest says which)")


def add_workers(p: Arguments, default: str) -> None:
    p.add_argument("--workers", type=positive_int, help="processes corrupting batches on the CPU, beside the rest "
                   f"of the work (default: {default}; the bytes do not depend on it)")


def print_records(records: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.row() for r in records], indent=2, default=str))
    else:
        print(records_table(records))


def add_data(p: Arguments, *, required: bool = True) -> None:
    """--dataset (one of the dataset registry's) and --data-dir."""
    p.add_argument("--dataset", required=required, help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", help="where the dataset lies on disk (not needed for the built-in ones)")
