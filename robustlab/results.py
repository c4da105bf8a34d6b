"""The result store: results.csv of a run directory, appended one synced line per finished cell."""
from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Protocol

from robustlab.errors import RobustlabError
from robustlab.files import append_synced
from robustlab.outcomes import Outcomes, read_outcomes, write_outcomes
from robustlab.schema import COLUMNS, NONE, Record, cell_key, format_value, results_frame


class Store(Protocol):
    """Where the runner puts records: the cells it already holds, and one append per finished cell with its
    per-image outcomes."""
    done: set[tuple[str, ...]]

    def append(self, record: Record, outcomes: Outcomes | None = None) -> Record:
        """Store the record (and its outcomes); returns it as stored."""

    def kept_outcomes(self, key: tuple[str, ...]) -> Outcomes | None:
        """The outcomes of a stored clean or attack cell (None if it kept none): the worst-case mode resumes from
        them."""


class ResultStore:
    """results.csv in a run directory. Every record is appended as one line in one write and synced to disk as
    soon as it exists, so a killed run loses at most the line being written; reopening drops such a torn line and
    knows which cells are done (`done`). A record's per-image outcomes are written and synced (outcomes/, one file
    per cell) before its line, so a line never exists without them; a file without a line (a kill between the two)
    is simply written again. `create` starts a new file (never over an existing one)."""

    def __init__(self, path: str | os.PathLike, *, create: bool = False) -> None:
        self.path = Path(path)
        self.done: set[tuple[str, ...]] = set()
        self._kept: dict[tuple[str, ...], Outcomes] = {}
        if create:
            self._write_line(COLUMNS, new=True)
            return
        held = self._read(self.path)
        self.done = set(held)
        self._kept = {key: outcomes for key, outcomes in held.items() if outcomes is not None}
        self._drop_torn_line()

    @staticmethod
    def inspect(path: Path) -> set[tuple[str, ...]]:
        """The cells an existing results file holds, or a refusal (a link, another schema, a line that a reader of
        the file would refuse, an outcome file that is missing or not the row's); reads only."""
        return set(ResultStore._read(path))

    def kept_outcomes(self, key: tuple[str, ...]) -> Outcomes | None:
        return self._kept.get(key)

    @staticmethod
    def _read(path: Path) -> dict[tuple[str, ...], Outcomes | None]:
        """The cells the file holds, with the outcomes of its clean and attack rows (checked, as every row's are)."""
        if path.is_symlink() or not path.is_file():
            raise RobustlabError(f"{path} is not a regular file robustlab wrote (a link or something else); pass "
                                 "another --out")
        data = path.read_bytes()
        whole = data[:data.rfind(b"\n") + 1]  # less a torn last line: the cell it was writing is not done
        try:
            lines = list(csv.reader(io.StringIO(whole.decode("utf-8"), newline="")))
        except (UnicodeDecodeError, csv.Error) as e:
            raise RobustlabError(f"{path} is not a readable results.csv ({str(e).splitlines()[0]}); repair it or "
                                 "pass another --out") from None
        if not lines or lines[0] != COLUMNS:
            raise RobustlabError(f"{path} has another column layout (schema); pass a new --out")
        rows = lines[1:]
        if rows:
            results_frame(path, COLUMNS, rows)
        held: dict[tuple[str, ...], Outcomes | None] = {}
        for values in rows:
            row = dict(zip(COLUMNS, values))
            outcomes = None
            if row["outcomes"]:
                outcomes = read_outcomes(path.parent, row["outcomes"], key=cell_key(row), image_set=row["image_set"],
                                         n=int(float(row["n"])), correct=int(float(row["correct"])))
            held[cell_key(row)] = outcomes if _kept(row) else None
        return held

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

    def append(self, record: Record, outcomes: Outcomes | None = None) -> Record:
        key = cell_key(record.row())
        if outcomes is not None:
            try:
                name = write_outcomes(self.path.parent, key, record.image_set, outcomes)
            except OSError as e:
                raise RobustlabError(f"cannot write the outcomes of a cell in {self.path.parent} ({e.strerror}); free "
                                     "space or pick another --out") from None
            record = dataclasses.replace(record, outcomes=name)
        row = record.row()
        self._write_line([format_value(row[c]) for c in COLUMNS])
        self.done.add(key)
        if outcomes is not None and _kept(row):
            self._kept[key] = outcomes
        return record


def _kept(row: dict[str, Any]) -> bool:
    """Whether the store keeps a row's outcomes in memory: clean and attack rows (what the worst-case mode needs)."""
    return row["attack"] != NONE or row["corruption"] == NONE
