"""A run directory: results.csv (the store), manifest.json (arguments, versions, hashes, device), figures/."""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

import torch

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


class RunDir:
    """Creates the directory, refuses to mix a new run into an existing one, and keeps the manifest current."""

    def __init__(self, path: str | os.PathLike, *, arguments: dict[str, Any], device: torch.device) -> None:
        self.path = Path(path)
        refuse_existing_run(self.path)
        try:
            (self.path / "figures").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RobustlabError(f"cannot create run directory {self.path} ({e.strerror}); pass a writable --out") \
                from None
        self.manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "arguments": arguments, "versions": package_versions(),
            "device": device_description(device), "started": dt.datetime.now().isoformat(timespec="seconds"),
            "status": "running", "models": {},
        }
        self.save_manifest()
        self.store = ResultStore(self.path / "results.csv")

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
