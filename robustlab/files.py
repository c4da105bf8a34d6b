"""Safe writes: atomic replacement through exclusively created temporary files, and synced appends; never
through a symbolic link."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError

NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits in bytes (PATH_MAX counts the final NUL)
_TEMPORARY = re.compile(r"\.(?P<of>.+)\.[a-z0-9_]+\.tmp")  # new_temporary's and _replace_in's names
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


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


def temporary_of(name: str) -> str | None:
    """The file whose temporary (left by a killed atomic write) the name `name` is, or None."""
    match = _TEMPORARY.fullmatch(name)
    return match["of"] if match else None


def _fill(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` through an exclusively created temporary file in the same directory."""
    fd, tmp = new_temporary(path)
    try:
        _fill(fd, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_below(root: Path, path: Path, data: bytes) -> None:
    """write_atomic for a file under the folder `root` (a run directory) that lands nowhere else: the folders from
    root down to path's are opened one name at a time without following a link (created when missing), and the
    temporary file is made and renamed inside the last of them, so a link planted anywhere below root is refused
    rather than written through, even one planted after the run's checks."""
    try:
        folder = _open_below(root, path.parent)
        try:
            _replace_in(folder, path.name, data)
        finally:
            os.close(folder)
    except OSError as e:  # through descriptors, an error names no file or a temporary one: name the file written
        raise OSError(e.errno, e.strerror, str(path)) from None


def _replace_in(folder: int, name: str, data: bytes) -> None:
    """Replace the file `name` in the open folder by `data` through an exclusively created temporary file."""
    while True:
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=folder)
            break
        except FileExistsError:
            continue
    try:
        _fill(fd, data)
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise


def _open_below(root: Path, folder: Path) -> int:
    """A descriptor of `folder`, opened from `root` down, each name below root never through a link."""
    fd = os.open(root, _FOLDER)
    try:
        parts = folder.relative_to(root).parts
        for i, part in enumerate(parts):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=fd)
            try:
                below = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise RobustlabError(f"{root.joinpath(*parts[:i + 1])} is a symbolic link or a file, not a directory; "
                                     f"robustlab writes nothing outside {root}: remove it") from None
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_path_length(path: str | os.PathLike, what: str) -> None:
    """A path the system would refuse as too long (ENAMETOOLONG), as one line before any work: a name over
    NAME_MAX bytes, or a path that leaves no room below it for a file name within PATH_MAX."""
    raw = os.fsencode(path)
    shown = os.fsdecode(raw[:60]) + ("..." if len(raw) > 60 else "")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise RobustlabError(f"{what} {shown} holds a name of {len(longest)} bytes, over the {NAME_MAX} a file name "
                             f"may have; pass a shorter {what}")
    if len(raw) + 1 + NAME_MAX >= PATH_MAX:
        raise RobustlabError(f"{what} {shown} is {len(raw)} bytes long, too long for the files under it (a path has "
                             f"at most {PATH_MAX - 1}); pass a shorter {what}")


def check_output(path: Path, *, root: Path, what: str, folder: bool = False) -> None:
    """Refuse, before anything is written, an output robustlab could not write or would write through a link:
    `root` under a file, a symbolic link at `path` or at a folder between root and it, a file where a folder goes
    (between root and path, or at path itself when `folder`), a folder where a file goes. `what` names the argument
    to change."""
    existing = next(p for p in (root, *root.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise RobustlabError(f"{existing} is a file, not a directory; pass another {what}")
    parts = path.relative_to(root).parts
    for i in range(len(parts)):
        p = root.joinpath(*parts[:i + 1])
        if p.is_symlink():
            raise RobustlabError(f"{p} is a symbolic link; robustlab writes nothing through links: remove it or pass "
                                 f"another {what}")
        if not p.exists():
            return
        if (i < len(parts) - 1 or folder) and not p.is_dir():
            raise RobustlabError(f"{p} is a file, where robustlab writes a directory; remove it or pass another "
                                 f"{what}")
        if i == len(parts) - 1 and not folder and p.is_dir():
            raise RobustlabError(f"{p} is a directory, where robustlab writes a file; remove it or pass another "
                                 f"{what}")


def check_output_folder(path: Path, *, root: Path, what: str, suffixes: tuple[str, ...]) -> None:
    """check_output for a folder robustlab fills with files of these suffixes, and for such files already in it."""
    check_output(path, root=root, what=what, folder=True)
    if path.is_dir():
        for entry in sorted(path.iterdir()):
            if entry.suffix in suffixes:
                check_output(entry, root=root, what=what)
