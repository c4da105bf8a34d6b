"""The `robustlab` command line (see app.py)."""
from robustlab.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
