"""Write a corrupted copy of a split in the published CIFAR-10-C layout (<corruption>.npy, labels.npy)."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from robustlab.corruptions.engine import reencode_quality
from robustlab.corruptions.pool import CorruptionPool, Job
from robustlab.corruptions.suites import CorruptionSuite
from robustlab.data.base import ImageSet
from robustlab.data.npy import NpyRows, NpyWriter
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.files import write_atomic, write_json
from robustlab.progress import ProgressFactory

SEVERITIES = (1, 2, 3, 4, 5)
LAYOUT_FILE = "robustlab-corrupt.json"  # what robustlab wrote here, and with which settings


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
    # a rank's temporary file (a layout file being written beside this check) is not someone else's file
    entries = sorted(p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))
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
                   overwrite: bool = False, reencode: bool | None = None, pool: CorruptionPool | None = None,
                   shard: Shard = Shard()) -> list[Path]:
    """One uint8 (5N, H, W, 3) array per corruption, severities 1..5 in blocks of N, and labels.npy (5N, uint8
    like the published files). An interrupted run into the same --out keeps the corruptions it finished.
    Returns the corruption files that are complete.

    The batches are corrupted by `pool` (processes on the CPU); every image is seeded by its index, so the bytes do
    not depend on the number of workers. Under torchrun (`shard`) each rank reads and
    corrupts every world-th batch into its own part file; whichever rank completes a corruption's last part
    assembles the published file, so the bytes do not depend on the number of ranks either, and a killed run
    keeps the parts it finished."""
    out, pool = Path(out), pool or CorruptionPool(1)
    total = len(base) if n is None else min(n, len(base))
    description = {**layout_description(base, table=table, seed=seed, total=total),
                   "jpeg": reencode_quality(table, reencode)}
    if overwrite and shard.world > 1:
        raise RobustlabError("--overwrite with several ranks would let them delete each other's work; delete the "
                             "--out directory first, or run without torchrun")
    _check_out(out, description, overwrite)
    labels = base.label_array(total)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise RobustlabError(f"{base.name} has labels outside 0..255, which the published uint8 labels.npy cannot "
                             "hold; write this split with another tool")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobustlabError(f"cannot create {out} ({e.strerror}); pass a writable --out") from None
    write_json(out / LAYOUT_FILE, description)  # every rank writes the same bytes
    shape = (*base.image_size, 3)
    mine = shard.batch_indices(total, batch_size)
    rows = sum(min(batch_size, total - b * batch_size) for b in mine)
    written = []
    for name in corruptions:
        final = out / f"{name}.npy"
        if final.is_file() and not overwrite:  # written whole or not at all (NpyWriter), so it is finished
            written.append(final)
            continue
        target = final if shard.world == 1 else _part(out, name, batch_size, shard)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            ticks = iter(progress(range(len(mine) * len(SEVERITIES)), total=len(mine) * len(SEVERITIES), desc=name))
            jobs = (Job(images.permute(0, 2, 3, 1).numpy(), name, s, b * batch_size)
                    for s in SEVERITIES for b, (images, _) in zip(mine, base.batches(batch_size, total, shard=shard)))
            with NpyWriter(target, (len(SEVERITIES) * rows, *shape), np.uint8) as arr:  # appears only when complete
                for batch in pool.corrupted(jobs, table=table, seed=seed, device=device, reencode=reencode):
                    arr.append(batch)
                    next(ticks, None)
        if shard.world == 1 or _assemble(out, name, total=total, batch_size=batch_size, world=shard.world,
                                         shape=shape):
            written.append(final)
    buffer = io.BytesIO()
    np.save(buffer, np.tile(labels.astype(np.uint8), len(SEVERITIES)))
    write_atomic(out / "labels.npy", buffer.getvalue())  # every rank writes the same bytes
    with contextlib.suppress(OSError):
        (out / PARTS_DIR).rmdir()  # once every corruption is assembled
    return written


PARTS_DIR = ".parts"  # under torchrun: each rank's rows of a corruption, until one rank assembles them


def _part(out: Path, name: str, batch_size: int, shard: Shard) -> Path:
    """A rank's rows of one corruption; the name holds what the rows' order depends on."""
    return out / PARTS_DIR / name / f"batch{batch_size}-rank{shard.rank}-of{shard.world}.npy"


def _assemble(out: Path, name: str, *, total: int, batch_size: int, world: int, shape: tuple[int, ...]) -> bool:
    """Join a corruption's parts into <name>.npy once every rank's part is there; whether the file is complete.

    Every rank calls this after committing its own part, so the last of them finds all parts. An flock (released
    if its holder dies) lets one rank assemble; the parts are removed afterwards."""
    final, parts_dir = out / f"{name}.npy", out / PARTS_DIR / name
    if final.is_file():
        return True
    parts_dir.mkdir(parents=True, exist_ok=True)
    with open(parts_dir / "assemble.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another rank is assembling it
        if not final.is_file():
            parts = [NpyRows(_part(out, name, batch_size, Shard(r, world))) for r in range(world)
                     if _part(out, name, batch_size, Shard(r, world)).is_file()]
            if len(parts) < world:
                return False  # a rank still works on its share
            offsets = [0] * world
            with NpyWriter(final, (len(SEVERITIES) * total, *shape), np.uint8) as arr:
                for _ in SEVERITIES:
                    for b in range(math.ceil(total / batch_size)):
                        r, k = b % world, min(batch_size, total - b * batch_size)
                        arr.append(parts[r][offsets[r]:offsets[r] + k])
                        offsets[r] += k
    shutil.rmtree(parts_dir, ignore_errors=True)
    return True
