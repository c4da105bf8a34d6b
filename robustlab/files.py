"""Safe writes: atomic replacement through exclusively created temporary files, and synced appends; never
through a symbolic link."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def append_synced(path: Path, data: bytes, *, new: bool) -> None:
    """Append `data` in one write() and sync it: a killed process leaves the line whole or torn, never mixed.
    Never through a symbolic link; `new` creates the file and refuses an existing one."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if new else 0)
    fd = os.open(path, flags, 0o644)
    try:
        if os.write(fd, data) != len(data):  # only a full disk writes less to a regular file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write JSON atomically: into a new temporary file of a random name (created exclusively, so a planted link
    is never followed), then renamed over `path`."""
    write_atomic(Path(path), (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def new_temporary(path: Path) -> tuple[int, str]:
    """A new file of a random name beside `path`, created exclusively (a planted link or file is never written
    through), with the permissions an ordinary new file gets (mkstemp's own are owner-only)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` through an exclusively created temporary file in the same directory."""
    fd, tmp = new_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
