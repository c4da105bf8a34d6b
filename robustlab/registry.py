"""A typed name -> object registry that answers unknown names with suggestions."""
from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Generic, Iterator, TypeVar

from robustlab.errors import RobustlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; `kind` names what is registered, for error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise RobustlabError(f"{self.kind} {name!r} is registered twice; rename one of them")
        self._entries[name] = entry
        return entry

    @contextlib.contextmanager
    def replaced(self, name: str, entry: T) -> Iterator[T]:
        """Inside the block `name` resolves to `entry` (a stand-in for a registered entry, as tests use); after it,
        to what it resolved to before."""
        before = self.get(name)
        self._entries[name] = entry
        try:
            yield entry
        finally:
            self._entries[name] = before

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise RobustlabError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"unknown {self.kind} {name!r}; {hint}known: {', '.join(sorted(self._entries))}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())
