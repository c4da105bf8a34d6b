"""Progress bars on long loops: shown on a terminal, silent otherwise or with --quiet."""
from __future__ import annotations

import sys
from typing import Callable, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
ProgressFactory = Callable[..., Iterable]


def progress_bars(quiet: bool = False) -> ProgressFactory:
    """A wrapper `(iterable, total=..., desc=...) -> iterable` that draws a bar when stderr is a terminal."""
    enabled = not quiet and sys.stderr.isatty()

    def wrap(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterable[T]:
        return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)

    return wrap
