"""A run directory: results.csv (the store), manifest.json (arguments, versions, hashes, device), figures/."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from robustlab.allocator import allocator_in_use
from robustlab.errors import RobustlabError
from robustlab.results import SCHEMA_VERSION, ResultStore, package_versions, write_json


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def default_run_dir(label: str) -> Path:
    return Path("runs") / f"{label}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def refuse_existing_run(path: Path) -> None:
    """A run directory that already holds results is never written into."""
    if (path / "results.csv").exists():
        raise RobustlabError(f"{path} already holds a run (results.csv); pass another --out or remove it")


# arguments that change how a run looks or where it runs, not what its rows measure
NEUTRAL_ARGUMENTS = frozenset({"quiet", "json", "device", "out", "allow_config_change"})


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The arguments that differ between two invocations, as 'name: old -> new'."""
    names = sorted((set(before) | set(after)) - NEUTRAL_ARGUMENTS)
    return [f"{n}: {before.get(n)!r} -> {after.get(n)!r}" for n in names if before.get(n) != after.get(n)]


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


class RunDir:
    """Creates the run directory, or resumes the run already in it (same arguments; other arguments only when
    `allow_config_change`), and keeps the manifest current. `store.done` holds the cells finished before."""

    def __init__(self, path: str | os.PathLike, *, arguments: dict[str, Any], device: torch.device,
                 allow_config_change: bool = False) -> None:
        self.path = Path(path)
        self.resumed = (self.path / "results.csv").exists()
        if self.resumed:
            self.manifest = self._resume(arguments, allow_config_change)
        else:
            try:
                (self.path / "figures").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RobustlabError(f"cannot create run directory {self.path} ({e.strerror}); pass a writable "
                                     "--out") from None
            self.manifest = {
                "schema_version": SCHEMA_VERSION, "arguments": arguments, "versions": package_versions(),
                "device": device_description(device), "malloc": allocator_in_use(), "started": _now(), "status": "running", "models": {},
            }
        self.save_manifest()
        self.store = ResultStore(self.path / "results.csv")
        self.done_before = len(self.store.done)

    def _resume(self, arguments: dict[str, Any], allow_config_change: bool) -> dict[str, Any]:
        try:
            manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError):
            raise RobustlabError(f"{self.path} holds results.csv but no readable manifest.json, so it cannot be "
                                 "resumed; pass another --out") from None
        changed = config_changes(manifest.get("arguments", {}), arguments)
        if changed and not allow_config_change:
            raise RobustlabError(f"{self.path} holds a run made with other arguments ({'; '.join(changed)}); repeat "
                                 "its command to resume it, pass another --out, or add --allow-config-change")
        manifest.setdefault("resumes", []).append({"at": _now(), "status_before": manifest.get("status"),
                                                   "changed": changed})
        manifest.update(arguments=arguments, status="running")
        return manifest

    def add_model(self, name: str, info: dict[str, Any]) -> None:
        self.manifest["models"][name] = info
        self.save_manifest()

    def finish(self, status: str = "finished") -> None:
        self.manifest["status"] = status
        self.manifest["ended"] = dt.datetime.now().isoformat(timespec="seconds")
        self.save_manifest()

    def save_manifest(self) -> None:
        try:
            write_json(self.path / "manifest.json", self.manifest)
        except OSError as e:
            raise RobustlabError(f"cannot write {self.path / 'manifest.json'} ({e.strerror}); free space or pick "
                                 "another --out") from None
