"""A run directory: results.csv (the store), manifest.json (arguments, versions, hashes, device), figures/.

One writer at a time: a run holds an advisory lock (flock on `.robustlab.lock`) from before its first write until
its process ends, so a second eval on the same --out is refused at once, and a lock left by a killed process never
blocks (the kernel drops it with the process). Everything a run would refuse is checked before anything is
written; the check is repeated under the lock, since another writer may have changed the directory meanwhile.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import platform
import socket
import stat
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from robustlab.allocator import allocator_in_use
from robustlab.errors import RobustlabError
from robustlab.files import temporary_of, write_json
from robustlab.results import ResultStore
from robustlab.schema import SCHEMA_VERSION, read_json_object

MANIFEST, RESULTS, LOCK = "manifest.json", "results.csv", ".robustlab.lock"
TOOL = "robustlab"  # the manifest's mark of a directory robustlab made
# what a calibration written into a fresh run directory leaves there (robustlab demo does so before its run)
CALIBRATION_LAYOUT = frozenset({"calibration.json", "figures"})


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("robustlab", "torch", "torchvision", "numpy", "torchattacks", "robustbench", "pyautoattack",
                "imagecorruptions", "pandas", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads)")


def default_run_dir(label: str) -> Path:
    return Path("runs") / f"{label}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def refuse_existing_run(path: Path) -> None:
    """A directory that already holds anything is never written into by a command that starts a new run there."""
    check_out_text(str(path))
    if path.is_dir() and any(path.iterdir()):
        raise RobustlabError(f"{path} is not empty; pass another --out or remove it")
    if path.exists() and not path.is_dir():
        raise RobustlabError(f"{path} exists and is not a directory; pass another --out")


def check_out_text(text: str) -> None:
    if not text.strip():
        raise RobustlabError("--out is empty; pass the directory to write into (e.g. --out runs/mine)")


# arguments that change how a run looks or where it runs, not what its rows measure
NEUTRAL_ARGUMENTS = frozenset({"quiet", "json", "device", "out", "allow_config_change"})


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The arguments that differ between two invocations, as 'name: old -> new'."""
    names = sorted((set(before) | set(after)) - NEUTRAL_ARGUMENTS)
    return [f"{n}: {before.get(n)!r} -> {after.get(n)!r}" for n in names if before.get(n) != after.get(n)]


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's manifest.json as a dict; a symlink, unreadable or too deeply nested JSON, a JSON value that is not an
    object, or arguments that are not one is one line naming the file."""
    if path.is_symlink():
        raise RobustlabError(f"{path} is a symbolic link; robustlab reads only the manifest it wrote: pass another "
                             "--out")
    fix = "its run cannot be resumed: pass another --out"
    try:
        manifest = read_json_object(path, fix)
    except OSError as e:
        raise RobustlabError(f"{path} cannot be read ({e.strerror}); {fix}") from None
    if "status" not in manifest:
        raise RobustlabError(f"{path} is not a robustlab manifest (a JSON object with a status); its directory "
                             "holds something else: pass another --out")
    if not isinstance(manifest.get("arguments", {}), dict):
        shown = repr(manifest["arguments"])
        raise RobustlabError(f"{path}: arguments is {shown[:200] + '...' if len(shown) > 200 else shown}, not a JSON "
                             f"object of the run's arguments; {fix}")
    return manifest


def busy(directory: Path, holder: str) -> RobustlabError:
    return RobustlabError(f"{directory} is being written by {holder}; wait for that run to end, or pass another --out")


def _open_lock(path: Path, flags: int) -> int | None:
    """The lock file opened with `flags`, or None when it is not a regular file. Never through a link, and never
    waiting: opening a FIFO for reading would wait for a writer forever."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


class RunLock:
    """An exclusive flock on DIR/.robustlab.lock, holding who took it (pid, host, start time)."""

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK
        try:
            fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise RobustlabError(f"cannot open the run lock {path} ({e.strerror}); pass another --out") from None
        if fd is None:
            raise RobustlabError(f"the run lock {path} is not a regular file; remove it, then run again")
        self.fd = fd
        holder = self._holder(self.fd)
        if holder is not None:
            os.close(self.fd)
            raise busy(directory, holder)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"robustlab pid {os.getpid()} on {socket.gethostname()}, started {_now()}\n".encode(), 0)

    @staticmethod
    def _holder(fd: int) -> str | None:
        """Takes the lock on fd; if another process holds it, who (the lock is not taken then)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        return None

    @classmethod
    def held_by(cls, directory: Path) -> str | None:
        """Who holds DIR's lock now, or None (nobody, or no lock file); takes nothing."""
        try:
            fd = _open_lock(directory / LOCK, os.O_RDONLY)
        except OSError:
            return None
        if fd is None:
            return None
        try:
            return cls._holder(fd)
        finally:
            os.close(fd)  # closing releases the lock if it was taken here

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class RunDir:
    """Creates the run directory, or resumes the run already in it (same arguments; other arguments only when
    `allow_config_change`), holds its lock and keeps the manifest current through its methods. `store.done` holds
    the cells finished before."""

    def __init__(self, path: str | os.PathLike, *, arguments: dict[str, Any], device: torch.device,
                 allow_config_change: bool = False) -> None:
        check_out_text(str(path))
        self.path = Path(path)
        try:
            self._inspect(arguments, allow_config_change)  # refuse before writing anything
        except RobustlabError:
            holder = RunLock.held_by(self.path)  # a run being written can be mid-way (results.csv, no manifest yet)
            if holder is not None:
                raise busy(self.path, holder) from None
            raise
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RobustlabError(f"cannot create run directory {self.path} ({e.strerror}); pass a writable "
                                 "--out") from None
        self.lock = RunLock(self.path)
        try:
            manifest = self._inspect(arguments, allow_config_change)  # again, now that nobody else writes
            for leftover in self.path.iterdir():  # a killed writer's manifest temporary, now that nobody writes
                if temporary_of(leftover.name) == MANIFEST:
                    leftover.unlink(missing_ok=True)
            self.resumed = manifest is not None
            if manifest is not None:
                manifest.setdefault("resumes", []).append({"at": _now(), "status_before": manifest.get("status"),
                                                           "changed": config_changes(manifest.get("arguments", {}),
                                                                                     arguments)})
                manifest.update(arguments=arguments, status="running")
                self.manifest = manifest
            else:
                (self.path / "figures").mkdir(exist_ok=True)
                self.manifest = {
                    "tool": TOOL, "schema_version": SCHEMA_VERSION, "arguments": arguments,
                    "versions": package_versions(), "device": device_description(device),
                    "malloc": allocator_in_use(), "started": _now(), "status": "running", "models": {},
                    "warnings": [],
                }
            # the manifest first: a run killed before its results file exists is resumed (its results file is made
            # then), while a results file without a manifest could not be
            self.save_manifest()
            self.store = ResultStore(self.path / RESULTS, create=not os.path.lexists(self.path / RESULTS))
        except BaseException:
            self.lock.release()
            raise
        self.done_before = len(self.store.done)

    def _inspect(self, arguments: dict[str, Any], allow_config_change: bool) -> dict[str, Any] | None:
        """The manifest of the run to resume (None for a new run), or a refusal; reads only."""
        path = self.path
        if not path.exists():
            return None
        if not path.is_dir():
            raise RobustlabError(f"cannot create run directory {path} (Not a directory); pass a writable --out")
        # a writer killed while writing its first manifest leaves the manifest's temporary
        entries = {p.name for p in path.iterdir() if p.name != LOCK and temporary_of(p.name) != MANIFEST}
        if MANIFEST not in entries:
            if RESULTS in entries:
                raise RobustlabError(f"{path} holds results.csv but no readable manifest.json, so it cannot be "
                                     "resumed; pass another --out")
            if entries and not entries <= CALIBRATION_LAYOUT:
                raise RobustlabError(f"{path} is not empty and not a robustlab run (no manifest.json); pass another "
                                     "--out, or an empty or new directory")
            return None
        manifest = read_manifest(path / MANIFEST)
        changed = config_changes(manifest.get("arguments", {}), arguments)
        if changed and not allow_config_change:
            raise RobustlabError(f"{path} holds a run made with other arguments ({'; '.join(changed)}); repeat "
                                 "its command to resume it, pass another --out, or add --allow-config-change")
        if RESULTS in entries:
            ResultStore.inspect(path / RESULTS)
        return manifest

    def add_model(self, name: str, info: dict[str, Any]) -> None:
        self.manifest["models"][name] = info
        self.save_manifest()

    def describe(self, section: str, value: Any) -> None:
        """Record one of the run's descriptive sections (corruption_suite, calibration, attacks, transfer_from,
        ranks) in the manifest."""
        if section not in ("corruption_suite", "calibration", "attacks", "transfer_from", "ranks"):
            raise ValueError(f"unknown manifest section {section!r}")
        self.manifest[section] = value
        self.save_manifest()

    def warn(self, message: str) -> None:
        """Keep a warning in the manifest (a resumed run keeps its earlier ones)."""
        self.manifest.setdefault("warnings", []).append(message)
        self.save_manifest()

    def finish(self, status: str = "finished") -> None:
        """Record how the run ended and release the run's lock."""
        self.manifest["status"] = status
        self.manifest["ended"] = _now()
        try:
            self.save_manifest()
        finally:
            self.lock.release()

    def save_manifest(self) -> None:
        try:
            write_json(self.path / MANIFEST, self.manifest)
        except OSError as e:
            raise RobustlabError(f"cannot write {self.path / MANIFEST} ({e.strerror}); free space or pick "
                                 "another --out") from None
