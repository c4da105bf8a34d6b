"""Progress bars on long loops: shown on a terminal or in a notebook, silent otherwise or with --quiet."""
from __future__ import annotations

import sys
from typing import Callable, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
ProgressFactory = Callable[..., Iterable]


def progress_bars(quiet: bool = False) -> ProgressFactory:
    """A wrapper `(iterable, total=..., desc=...) -> iterable` that draws a bar when stderr is a terminal or the
    code runs in a Jupyter kernel (tqdm.auto draws a widget there)."""
    enabled = not quiet and (sys.stderr.isatty() or "ipykernel" in sys.modules)

    def wrap(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterable[T]:
        return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)

    return wrap
