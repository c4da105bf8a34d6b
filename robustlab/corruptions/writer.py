"""Write a corrupted copy of a split in the published CIFAR-10-C layout (<corruption>.npy, labels.npy)."""
from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from robustlab.corruptions.engine import corrupt, reencode_quality
from robustlab.corruptions.suites import CorruptionSuite
from robustlab.data.base import ImageSet
from robustlab.data.npy import NpyWriter
from robustlab.errors import RobustlabError
from robustlab.files import write_atomic, write_json
from robustlab.progress import ProgressFactory

SEVERITIES = (1, 2, 3, 4, 5)
LAYOUT_FILE = "robustlab-corrupt.json"  # what robustlab wrote here, and with which settings


def _corrupt_job(job: tuple[np.ndarray, str, int, int], table: str, seed: int, reencode: bool | None) -> np.ndarray:
    images, name, severity, start = job
    return corrupt(images, name, severity, table=table, seed=seed, start=start, reencode=reencode)


def _corrupted(jobs: Iterator[tuple[np.ndarray, str, int, int]], *, table: str, seed: int, device: torch.device,
               reencode: bool | None, workers: int) -> Iterator[np.ndarray]:
    """The corrupted batches of `jobs` (images, corruption, severity, index of the first image), in order."""
    if workers <= 1 or device.type != "cpu":
        for images, name, severity, start in jobs:
            yield corrupt(images, name, severity, table=table, seed=seed, start=start, device=device,
                          reencode=reencode)
        return
    # spawned, not forked: a forked copy of a process that already ran torch's OpenMP pool can hang
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(partial(_corrupt_job, table=table, seed=seed, reencode=reencode), jobs,
                            chunksize=1)


def layout_corruptions(suite: CorruptionSuite) -> list[str]:
    """The corruptions of a suite that a CIFAR-10-C layout can hold (severities 1..5 of a parameter table)."""
    if any(c.param is not None for c in suite.cells):
        raise RobustlabError(f"suite {suite.name} defines its own levels; the CIFAR-10-C layout holds severities "
                             "1..5 of the parameter table only: pass a suite without [levels]")
    return list(dict.fromkeys(c.corruption for c in suite.cells))


def layout_description(base: ImageSet, *, table: str, seed: int, total: int) -> dict[str, Any]:
    """What a layout's files depend on; a killed `corrupt` resumes only into a layout of the same description."""
    return {"tool": "robustlab", "dataset": base.name, "split": base.split, "images": total, "table": table,
            "seed": seed}


def _check_out(out: Path, description: dict[str, Any], overwrite: bool) -> None:
    """Refuse an --out holding files robustlab did not write for this layout (unless `overwrite`); reads only."""
    if out.exists() and not out.is_dir():
        raise RobustlabError(f"{out} exists and is not a directory; pass another --out")
    if not out.is_dir() or overwrite:
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    mine = out / LAYOUT_FILE
    if mine.is_file() and not mine.is_symlink():
        try:
            recorded = json.loads(mine.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded == description:
            return  # the same layout, interrupted: finished corruptions are kept
        raise RobustlabError(f"{out} holds a layout made with other settings ({LAYOUT_FILE}); pass --overwrite to "
                             "replace it, or another --out")
    raise RobustlabError(f"{out} holds files robustlab did not write ({', '.join(entries[:3])}"
                         f"{' ...' if len(entries) > 3 else ''}); pass --overwrite to replace them, or another --out")


def write_c_layout(base: ImageSet, out: str | os.PathLike, corruptions: Sequence[str], *, table: str, seed: int,
                   n: int | None, batch_size: int, device: torch.device, progress: ProgressFactory,
                   overwrite: bool = False, reencode: bool | None = None, workers: int = 1) -> list[Path]:
    """One uint8 (5N, H, W, 3) array per corruption, severities 1..5 in blocks of N, and labels.npy (5N, uint8
    like the published files). An interrupted run into the same --out keeps the corruptions it finished.

    With `workers` > 1 the batches are corrupted by a pool of processes (CPU only); every image is seeded by its
    index, so the bytes do not depend on the number of workers."""
    out = Path(out)
    total = len(base) if n is None else min(n, len(base))
    description = {**layout_description(base, table=table, seed=seed, total=total),
                   "jpeg": reencode_quality(table, reencode)}
    _check_out(out, description, overwrite)
    labels = base.label_array(total)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise RobustlabError(f"{base.name} has labels outside 0..255, which the published uint8 labels.npy cannot "
                             "hold; write this split with another tool")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobustlabError(f"cannot create {out} ({e.strerror}); pass a writable --out") from None
    write_json(out / LAYOUT_FILE, description)
    h, w = base.image_size
    written = []
    steps = math.ceil(total / batch_size) * len(SEVERITIES)
    for name in corruptions:
        path = out / f"{name}.npy"
        if path.is_file() and not overwrite:  # written whole or not at all (NpyWriter), so it is finished
            written.append(path)
            continue
        ticks = iter(progress(range(steps), total=steps, desc=name))
        jobs = ((images.permute(0, 2, 3, 1).numpy(), name, s, start)
                for s in SEVERITIES for start, (images, _) in zip(range(0, total, batch_size),
                                                                  base.batches(batch_size, total)))
        with NpyWriter(path, (5 * total, h, w, 3), np.uint8) as arr:  # the file appears only when complete
            for batch in _corrupted(jobs, table=table, seed=seed, device=device, reencode=reencode,
                                    workers=workers):
                arr.append(batch)
                next(ticks, None)
        written.append(path)
    buffer = io.BytesIO()
    np.save(buffer, np.tile(labels.astype(np.uint8), 5))
    write_atomic(out / "labels.npy", buffer.getvalue())
    return written
