""".npy arrays read and written a range of rows at a time with plain file I/O.

A memory map would do the same in fewer lines, but every page it touches stays mapped in the process, so
streaming through a corrupted split would grow the resident memory to the size of the split.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from robustlab.errors import RobustlabError
from robustlab.files import new_temporary

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class NpyRows:
    """Rows start..stop (default all) of a C-order .npy array on disk; indexing reads only the rows asked for,
    into a new array."""

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                shape, fortran_order, self.dtype = _HEADER_READERS[version](f)
            except (ValueError, KeyError, EOFError) as e:
                raise RobustlabError(f"{self.path} is not a .npy array numpy can stream ({e}); save it with "
                                     "numpy.save") from None
            self.offset = f.tell()
        if fortran_order or self.dtype.hasobject or not shape:
            raise RobustlabError(f"{self.path} holds a {'Fortran-order ' if fortran_order else ''}{self.dtype} "
                                 f"array of shape {shape}; save a C-order array of numbers with numpy.save")
        self.row_shape = tuple(shape[1:])
        self.row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        need, size = self.offset + shape[0] * self.row_bytes, self.path.stat().st_size
        if size < need:
            raise RobustlabError(f"{self.path} is truncated ({size} bytes; its header promises {need}); "
                                 "download or copy it again")
        self.start, self.stop = start, shape[0] if stop is None else stop

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stop - self.start, *self.row_shape)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read(start, max(start, stop))
            index = np.arange(start, stop, step)
        out = np.empty((len(index), *self.row_shape), self.dtype)
        for k, i in enumerate(index):  # a shuffled order (training): one read per row
            out[k] = self._read(int(i), int(i) + 1)[0]
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.row_shape), self.dtype)
        with open(self.path, "rb") as f:
            f.seek(self.offset + (self.start + start) * self.row_bytes)
            got = f.readinto(out.reshape(-1).view(np.uint8).data)
        if got != out.nbytes:
            raise RobustlabError(f"{self.path} ended early (read {got} of {out.nbytes} bytes at row "
                                 f"{self.start + start}); download or copy it again")
        return out


class NpyWriter:
    """A C-order .npy file filled by appending rows; it appears under its name only once every row is written
    (use it as a context manager: on an error, or if the rows fall short, the partial file is removed)."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        # a new file of a random name, created exclusively: a planted link or file is never written through
        fd, tmp = new_temporary(self.path)
        self.tmp, self.file = Path(tmp), os.fdopen(fd, "wb")
        self.written = 0
        self.sha256 = hashlib.sha256()  # of the rows' bytes, for a checksum beside the file
        self.committed = False
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": self.shape})

    def append(self, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).data
        self.file.write(data)
        self.sha256.update(data)
        self.written += len(rows)
        if self.written == self.shape[0]:
            self.commit()

    def commit(self) -> None:
        """Give the file its name as soon as every row is written (a reader that stops early loses nothing)."""
        if not self.committed:
            self.file.close()
            os.replace(self.tmp, self.path)
            self.committed = True

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.committed:
            return
        self.file.close()
        self.tmp.unlink(missing_ok=True)
