"""Corrupted splits: the published CIFAR-10/100-C and ImageNet-C layouts, and on-the-fly generation with a cache."""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from robustlab.corruptions.engine import ENGINE_VERSION, reencode_quality
from robustlab.corruptions.pool import CorruptionPool, Job
from robustlab.data.base import ArrayImageSet, Batch, ImageSet, check_labels, check_pixels
from robustlab.data.imagenet import FolderImageSet
from robustlab.data.npy import NpyRows, NpyWriter
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.files import temporary_of, write_json

CIFAR_C_PER_SEVERITY = 10000


def load_cifar_c(c_dir: str | Path, corruption: str, severity: int, *, name: str, num_classes: int) -> ArrayImageSet:
    """One (corruption, severity) block of a CIFAR-10-C / CIFAR-100-C directory, read batch by batch from disk."""
    c_dir = Path(c_dir)
    path, labels_path = c_dir / f"{corruption}.npy", c_dir / "labels.npy"
    for p in (path, labels_path):
        if not p.is_file():
            raise RobustlabError(f"{p} is missing; point --c-dir at a folder holding <corruption>.npy and "
                                 "labels.npy (the published CIFAR-10-C layout)")
    images = NpyRows(path)
    try:
        labels = np.load(labels_path)
    except ValueError as e:
        raise RobustlabError(f"{labels_path} is not a .npy array ({e}); save it with numpy.save") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise RobustlabError(f"{labels_path} holds {labels.dtype} labels of shape {labels.shape}, not one integer "
                             "label per image; store them as integers (labels.astype(np.uint8) for 10 or 100 classes)")
    if images.dtype != np.uint8:
        check_pixels(np.load(path, mmap_mode="r"), str(path))
    per = len(images) // 5
    if len(images.shape) != 4 or images.shape[-1] != 3 or len(images) % 5 or not per:
        raise RobustlabError(f"{path} has shape {images.shape}; expected (5*N, H, W, 3) with N >= 1 (severities "
                             "1..5 in blocks of N): use the published file, or write one with robustlab corrupt")
    if len(labels) != len(images) and len(labels) != per:
        raise RobustlabError(f"labels.npy has {len(labels)} labels for {len(images)} images in {path.name}, not "
                             f"{len(images)} (or {per}); use the labels.npy published with these files")
    start = (severity - 1) * per
    lab = labels[start:start + per] if len(labels) == len(images) else labels
    check_labels(lab, num_classes, str(labels_path), start if len(labels) == len(images) else 0)
    return ArrayImageSet(NpyRows(path, start, start + per), lab, name=name, split="test", num_classes=num_classes)


def load_imagenet_c(c_dir: str | Path, corruption: str, severity: int) -> FolderImageSet:
    """`<c_dir>/<corruption>/<severity>/<wnid>/<file>.JPEG`."""
    root = Path(c_dir) / corruption / str(severity)
    if not root.is_dir():
        raise RobustlabError(f"{root} is missing; point --c-dir at a folder holding "
                             "<corruption>/<severity>/<wnid>/*.JPEG (the published ImageNet-C layout)")
    return FolderImageSet(root, name="imagenet", split="val", resize=False)  # the files are 224x224 crops already


CACHE_STALE_SECONDS = 3600  # a cache's temporary file untouched this long belongs to a killed process


def content_digest(data: ImageSet, n: int) -> str:
    """sha256 of the first n images and labels as decoded (two sets of the same length differ here)."""
    h = hashlib.sha256()
    for images, labels in data.batches(256, n):
        h.update(images.numpy().tobytes())
        h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


class GeneratedImageSet(ImageSet):
    """A corruption generated from a clean split, per batch, seeded per image. Generated sets are cached as .npy
    files keyed by the source images' content, the engine version, parameter set, seed, corruption, severity and level;
    each cache file has a sidecar (.json) with its shape and checksum, verified before use: an invalid one is
    regenerated with a warning (`log`)."""

    def __init__(self, base: ImageSet, corruption: str, severity: int, *, parameters: str, seed: int,
                 param: float | None = None, cache_dir: Path | None = None, device: str | torch.device = "cpu",
                 log: Callable[[str], None] = lambda _: None, reencode: bool | None = None,
                 digests: dict[int, str] | None = None, pool: CorruptionPool | None = None) -> None:
        self.base, self.corruption, self.severity = base, corruption, severity
        self.parameters, self.seed, self.param, self.device = parameters, seed, param, device
        self.name, self.split, self.num_classes = base.name, base.split, base.num_classes
        self.image_size = base.image_size
        self.cache_dir, self.log = cache_dir, log
        self.reencode = reencode
        # the source's content digest per image count; pass one dict to every corruption of a base set, so that its
        # images are hashed once, not once per cell
        self._digests = {} if digests is None else digests
        self.pool = pool or CorruptionPool(1)  # pass one pool to every corruption of a run: its workers start once

    def __len__(self) -> int:
        return len(self.base)

    def label_array(self, n: int | None = None) -> np.ndarray:
        return self.base.label_array(n)

    def _cache_key(self, n: int) -> dict[str, Any]:
        if n not in self._digests:
            self._digests[n] = content_digest(self.base, n)
        return {"source": self._digests[n], "images": n, "engine": ENGINE_VERSION, "parameters": self.parameters,
                "seed": self.seed, "corruption": self.corruption, "severity": self.severity, "level": self.param,
                "jpeg": reencode_quality(self.parameters, self.reencode)}

    def _cache_path(self, key: dict[str, Any]) -> Path:
        assert self.cache_dir is not None  # only a cached set has cache files
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"{self.base.name}-{self.corruption}-{self.severity}-{digest}.npy"

    def _valid_cache(self, path: Path, key: dict[str, Any], n: int) -> bool:
        """Whether a cache file is there and is what its sidecar says (shape, checksum, key); a bad one is removed."""
        sidecar = path.with_suffix(".json")
        if not path.is_file() and not sidecar.is_file():
            return False
        try:
            meta = json.loads(sidecar.read_text())
            rows = NpyRows(path)
            ok = (meta.get("key") == key and list(rows.shape) == [n, *self.image_size, 3]
                  and rows.dtype == np.uint8 and _rows_sha256(rows) == meta.get("sha256"))
        except (OSError, ValueError, RobustlabError, AttributeError):
            ok = False
        if not ok:
            self.log(f"warning: the cached {self.corruption} severity {self.severity} ({path}) does not match its "
                     "checksum, shape or key; it is generated again")
            for p in (path, sidecar):
                with contextlib.suppress(OSError):
                    p.unlink()
        return ok

    def _remove_stale(self, path: Path) -> None:
        now = time.time()
        for tmp in path.parent.glob(".*.tmp"):
            if temporary_of(tmp.name) != path.name:
                continue
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > CACHE_STALE_SECONDS:
                    tmp.unlink()

    def batches(self, batch_size: int, n: int | None = None, order: np.ndarray | None = None, *,
                shard: Shard = Shard()) -> Iterator[Batch]:
        if order is not None:
            raise RobustlabError("generated corruptions are read in order; shuffle the clean split instead")
        total = len(self) if n is None else min(n, len(self))
        key = self._cache_key(total) if self.cache_dir is not None else None
        cache = self._cache_path(key) if key is not None else None
        if cache is not None and key is not None and self._valid_cache(cache, key, total):
            yield from ArrayImageSet(NpyRows(cache), self.base.label_array(total), name=self.name,
                                     split=self.split, num_classes=self.num_classes).batches(batch_size, total,
                                                                                            shard=shard)
            return
        with contextlib.ExitStack() as stack:
            writer = None
            if cache is not None and shard.world == 1:  # a shard generates only its part: nothing whole to cache
                cache.parent.mkdir(parents=True, exist_ok=True)
                self._remove_stale(cache)
                writer = stack.enter_context(NpyWriter(cache, (total, *self.image_size, 3), np.uint8))
            indices = shard.batch_indices(total, batch_size)
            labels: deque[torch.Tensor] = deque()  # of the batches in flight, in order

            def jobs() -> Iterator[Job]:
                for index, (images, y) in zip(indices, self.base.batches(batch_size, total, shard=shard)):
                    labels.append(y)
                    yield Job(images.permute(0, 2, 3, 1).numpy(), self.corruption, self.severity,
                              index * batch_size, self.param)
            for out in self.pool.corrupted(jobs(), parameters=self.parameters, seed=self.seed,
                                           device=torch.device(self.device), reencode=self.reencode):
                if writer is not None:
                    writer.append(out)  # complete after the last batch: named before that batch is yielded
                    if writer.committed:
                        write_json(writer.path.with_suffix(".json"), {"key": key, "sha256": writer.sha256.hexdigest(),
                                                                      "shape": [total, *self.image_size, 3]})
                yield torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), labels.popleft()


def _rows_sha256(rows: NpyRows) -> str:
    h = hashlib.sha256()
    step = 4096
    for start in range(0, len(rows), step):
        h.update(rows[start:start + step].tobytes())
    return h.hexdigest()
