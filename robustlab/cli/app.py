"""The `robustlab` command: one module per subcommand (robustlab/cli/*.py), assembled here. Bad input: one line on
stderr, exit code 2."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Sequence

from robustlab.allocator import keep_freed_memory
from robustlab.cli import calibrate, corrupt, demo, fit_rdsn, leaderboard, list, metrics, regress, report, train
from robustlab.cli import eval as eval_
from robustlab.cli.arguments import EXIT_BAD_INPUT, Parser
from robustlab.errors import RobustlabError, write_error
from robustlab.files import check_path_length
from robustlab.version import __version__

# a write that failed for lack of space or permission (corrupt, report, ...): one line, not a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
COMMANDS = tuple(m.COMMAND for m in (eval_, calibrate, train, fit_rdsn, demo, corrupt, metrics, report, leaderboard,
                                     regress, list))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="robustlab", description="Robustness evaluation of image classifiers.")
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, epilog=command.epilog,
                           formatter_class=command.formatter_class)
        command.arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        if getattr(args, "out", None):  # eval, calibrate, corrupt, ...: the system's limit, before any work
            check_path_length(args.out, "--out")
        return args.func(args)
    except RobustlabError as e:
        print(f"robustlab: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader went away (`robustlab ... | head`): stop quietly (before OSError, its base)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"robustlab: error: {write_error(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("robustlab: interrupted; every finished cell is saved in the run's results.csv: run the same command "
              "again to resume", file=sys.stderr)
        return 130
