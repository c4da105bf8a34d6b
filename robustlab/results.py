"""The result store: results.csv of a run directory, appended one synced line per finished cell."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Protocol

from robustlab.errors import RobustlabError
from robustlab.files import append_synced
from robustlab.schema import COLUMNS, Record, cell_key, format_value


class Store(Protocol):
    """Where the runner puts records: the cells it already holds, and one append per finished cell."""
    done: set[tuple[str, ...]]

    def append(self, record: Record) -> None: ...


class ResultStore:
    """results.csv in a run directory. Every record is appended as one line in one write and synced to disk as
    soon as it exists, so a killed run loses at most the line being written; reopening drops such a torn line and
    knows which cells are done (`done`). `create` starts a new file (never over an existing one)."""

    def __init__(self, path: str | os.PathLike, *, create: bool = False) -> None:
        self.path = Path(path)
        self.done: set[tuple[str, ...]] = set()
        if create:
            self._write_line(COLUMNS, new=True)
            return
        self.done = self.inspect(self.path)
        self._drop_torn_line()

    @staticmethod
    def inspect(path: Path) -> set[tuple[str, ...]]:
        """The cells an existing results file holds, or a refusal (a link, another schema); reads only."""
        if path.is_symlink() or not path.is_file():
            raise RobustlabError(f"{path} is not a regular file robustlab wrote (a link or something else); pass "
                                 "another --out")
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != COLUMNS:
                raise RobustlabError(f"{path} has another column layout (schema); pass a new --out")
            rows = list(reader)
        data = path.read_bytes()
        if data and not data.endswith(b"\n") and rows:
            rows = rows[:-1]  # a torn last line: the cell it was writing is not done
        return {cell_key(dict(zip(COLUMNS, values))) for values in rows if len(values) == len(COLUMNS)}

    def _drop_torn_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, data.rfind(b"\n") + 1)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_line(self, values: list[Any], *, new: bool = False) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        try:
            append_synced(self.path, buffer.getvalue().encode(), new=new)
        except FileExistsError:
            raise RobustlabError(f"{self.path} appeared while the run started; pass another --out") from None
        except OSError as e:
            raise RobustlabError(f"cannot write {self.path} ({e.strerror}); free space or pick another --out") \
                from None

    def append(self, record: Record) -> None:
        row = record.row()
        self._write_line([format_value(row[c]) for c in COLUMNS])
        self.done.add(cell_key(row))


