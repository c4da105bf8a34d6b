"""Write a corrupted copy of a split in the published CIFAR-10-C layout (<corruption>.npy, labels.npy)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import math
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from robustlab.corruptions.engine import reencode_quality
from robustlab.corruptions.parameters import OLD_PARAMETERS_KEY
from robustlab.corruptions.pool import CorruptionPool, Job
from robustlab.corruptions.suites import CorruptionSuite
from robustlab.data.base import ImageSet
from robustlab.data.imagenet import FolderImageSet
from robustlab.data.npy import NpyRows, NpyWriter
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.files import temporary_of, write_atomic, write_json
from robustlab.progress import ProgressFactory

SEVERITIES = (1, 2, 3, 4, 5)
LAYOUT_FILE = "robustlab-corrupt.json"  # what robustlab wrote here, and with which settings


def layout_corruptions(suite: CorruptionSuite) -> list[str]:
    """The corruptions of a suite that a CIFAR-10-C layout can hold (severities 1..5 of a parameter set)."""
    if any(c.param is not None for c in suite.cells):
        raise RobustlabError(f"suite {suite.name} defines its own levels; the CIFAR-10-C layout holds severities "
                             "1..5 of the parameter set only: pass a suite without [levels]")
    return list(dict.fromkeys(c.corruption for c in suite.cells))


def layout_description(base: ImageSet, *, parameters: str, seed: int, total: int) -> dict[str, Any]:
    """What a layout's files depend on; a killed `corrupt` resumes only into a layout of the same description."""
    return {"tool": "robustlab", "dataset": base.name, "split": base.split, "images": total, "parameters": parameters,
            "seed": seed}


def _check_out(out: Path, description: dict[str, Any], overwrite: bool) -> None:
    """Refuse an --out holding files robustlab did not write for this layout (unless `overwrite`); reads only."""
    if out.exists() and not out.is_dir():
        raise RobustlabError(f"{out} exists and is not a directory; pass another --out")
    if not out.is_dir() or overwrite:
        return
    # a rank's temporary file (a layout file being written beside this check) is not someone else's file
    entries = sorted(p.name for p in out.iterdir() if temporary_of(p.name) is None)
    if not entries:
        return
    mine = out / LAYOUT_FILE
    if mine.is_file() and not mine.is_symlink():
        try:
            recorded = json.loads(mine.read_text())
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and OLD_PARAMETERS_KEY in recorded:  # a layout begun before the rename
            recorded["parameters"] = recorded.pop(OLD_PARAMETERS_KEY)
        if recorded == description:
            return  # the same layout, interrupted: finished corruptions are kept
        raise RobustlabError(f"{out} holds a layout made with other settings ({LAYOUT_FILE}); pass --overwrite to "
                             "replace it, or another --out")
    raise RobustlabError(f"{out} holds files robustlab did not write ({', '.join(entries[:3])}"
                         f"{' ...' if len(entries) > 3 else ''}); pass --overwrite to replace them, or another --out")


@contextlib.contextmanager
def _prepared(base: ImageSet, out: Path, *, parameters: str, seed: int, total: int, reencode: bool | None,
              overwrite: bool, shard: Shard, files: Sequence[str] = ()) -> Iterator[None]:
    """Check --out (and that no directory stands where `files` go), then create it, hold its lock (`_writing`) and
    record the layout's description (every rank alike)."""
    description = {**layout_description(base, parameters=parameters, seed=seed, total=total),
                   "jpeg": reencode_quality(parameters, reencode)}
    if overwrite and shard.world > 1:
        raise RobustlabError("--overwrite with several ranks would let them delete each other's work; delete the "
                             "--out directory first, or run without torchrun")
    _check_out(out, description, overwrite)
    for name in (LAYOUT_FILE, *files):
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise RobustlabError(f"{out / name} is a directory, where robustlab writes a file; remove it or pass "
                                 "another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobustlabError(f"cannot create {out} ({e.strerror}); pass a writable --out") from None
    with _writing(out, shard):
        write_json(out / LAYOUT_FILE, description)  # every rank writes the same bytes
        yield


@contextlib.contextmanager
def _writing(out: Path, shard: Shard) -> Iterator[None]:
    """A shared flock on --out while this process writes into it. A lone process (no torchrun) that can take it
    exclusively finds nobody writing there, so the temporary files there are a killed run's: it removes them first.
    Ranks remove none: a rank on another machine may be writing, and a directory's flock reaches this machine only."""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # a lock file would be one more file in --out
    try:
        if shard.world == 1:
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                for path in out.iterdir():
                    of = temporary_of(path.name)  # a killed write's leftover
                    if of is not None and (of.endswith(".npy") or of == LAYOUT_FILE) and not path.is_dir():
                        path.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _finished(path: Path, shape: tuple[int, ...], warn: bool = False) -> bool:
    """Whether `path` is a corruption file as NpyWriter writes it for this layout: written whole or not at all, it
    is finished. Anything else there (a link, a truncated or foreign array) is to be generated again; `warn` says
    so on stderr."""
    try:
        problem = _problem(path, shape)
    except FileNotFoundError:
        return False
    if problem is not None and warn:
        print(f"robustlab: warning: {path} is {problem}; it is generated again", file=sys.stderr)
    return problem is None


def _problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """What makes `path` other than a regular file (not a link) holding a C-order uint8 array of `shape` and
    exactly its bytes; None if nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO does not block
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link"
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        with os.fdopen(fd, "rb", closefd=False) as f:
            try:
                np.lib.format.read_magic(f)
                found, fortran, dtype = np.lib.format.read_array_header_1_0(f)  # the version NpyWriter writes
            except ValueError:
                return "not a .npy array"
            need = f.tell() + math.prod(shape)
    finally:
        os.close(fd)
    if fortran or dtype != np.uint8 or tuple(found) != shape:
        return f"an array of {dtype}{', Fortran order' if fortran else ''}, shape {found}, not of uint8, shape {shape}"
    if info.st_size != need:
        return f"{'truncated' if info.st_size < need else 'longer than its array'} ({info.st_size} bytes, not {need})"
    return None


def write_c_layout(base: ImageSet, out: str | os.PathLike, corruptions: Sequence[str], *, parameters: str, seed: int,
                   n: int | None, batch_size: int, device: torch.device, progress: ProgressFactory,
                   overwrite: bool = False, reencode: bool | None = None, pool: CorruptionPool | None = None,
                   shard: Shard = Shard()) -> list[Path]:
    """One uint8 (5N, H, W, 3) array per corruption, severities 1..5 in blocks of N, and labels.npy (5N, uint8
    like the published files). An interrupted run into the same --out keeps the corruptions it finished.
    Returns the corruption files that are complete.

    The batches are corrupted by `pool` (processes on the CPU); every image is seeded by its index, so the bytes do
    not depend on the number of workers. Under torchrun (`shard`) each rank reads and corrupts every world-th
    batch into its own part file; whichever rank completes a corruption's last part assembles the published file,
    so the bytes do not depend on the number of ranks either, and a killed run keeps the parts it finished."""
    out, pool = Path(out), pool or CorruptionPool(1)
    total = len(base) if n is None else min(n, len(base))
    labels = base.label_array(total)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise RobustlabError(f"{base.name} has labels outside 0..255, which the published uint8 labels.npy cannot "
                             "hold; write this split with another tool")
    files = [*(f"{name}.npy" for name in corruptions), "labels.npy"]
    with _prepared(base, out, parameters=parameters, seed=seed, total=total, reencode=reencode, overwrite=overwrite,
                   shard=shard, files=files):
        shape = (*base.image_size, 3)
        mine = shard.batch_indices(total, batch_size)
        rows = sum(min(batch_size, total - b * batch_size) for b in mine)
        written = []
        for name in corruptions:
            final = out / f"{name}.npy"
            if not overwrite and _finished(final, (len(SEVERITIES) * total, *shape), warn=True):
                written.append(final)
                continue
            target = final if shard.world == 1 else _part(out, name, batch_size, shard)
            # a rank beyond the number of batches has no share; a rank's finished part is kept
            if len(mine) and (overwrite or target == final or not target.is_file()):
                target.parent.mkdir(parents=True, exist_ok=True)
                steps = len(mine) * len(SEVERITIES)
                ticks = iter(progress(range(steps), total=steps, desc=name))
                jobs = (Job(images.permute(0, 2, 3, 1).numpy(), name, s, b * batch_size) for s in SEVERITIES
                        for b, (images, _) in zip(mine, base.batches(batch_size, total, shard=shard)))
                with NpyWriter(target, (len(SEVERITIES) * rows, *shape), np.uint8) as arr:  # named when complete
                    for batch in pool.corrupted(jobs, parameters=parameters, seed=seed, device=device,
                                                reencode=reencode):
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

    Every rank calls this after committing its own part and waits for the lock (an flock, released if its holder
    dies), so the last of them to finish finds every part; the parts are removed under the lock."""
    final, parts_dir = out / f"{name}.npy", out / PARTS_DIR / name
    whole = (len(SEVERITIES) * total, *shape)
    if _finished(final, whole):
        return True
    try:
        parts_dir.mkdir(parents=True, exist_ok=True)
        lock = open(parts_dir / "assemble.lock", "a")
    except FileNotFoundError:  # another rank removed the parts between our check and here: it assembled them
        return _finished(final, whole)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _finished(final, whole):
            holders = min(world, math.ceil(total / batch_size))  # the ranks that have batches
            paths = [_part(out, name, batch_size, Shard(r, world)) for r in range(holders)]
            if not all(p.is_file() for p in paths):
                return False  # a rank still works on its share; it assembles when it is done
            parts = [NpyRows(p) for p in paths]
            offsets = [0] * holders
            with NpyWriter(final, (len(SEVERITIES) * total, *shape), np.uint8) as arr:
                for _ in SEVERITIES:
                    for b in range(math.ceil(total / batch_size)):
                        r, k = b % world, min(batch_size, total - b * batch_size)
                        arr.append(parts[r][offsets[r]:offsets[r] + k])
                        offsets[r] += k
        shutil.rmtree(parts_dir, ignore_errors=True)
    return True


def write_folder_layout(base: FolderImageSet, out: str | os.PathLike, corruptions: Sequence[str], *, parameters: str,
                        seed: int, n: int | None, batch_size: int, device: torch.device, progress: ProgressFactory,
                        overwrite: bool = False, reencode: bool | None = None, pool: CorruptionPool | None = None,
                        shard: Shard = Shard()) -> list[Path]:
    """ImageNet-C's published layout, <corruption>/<severity>/<wnid>/<file>: each corrupted image saved as
    make_imagenet_c.py saves it (JPEG, quality 85, optimize=True) when the parameter set re-encodes, else as PNG
    (lossless). Every image is its own file, written atomically, so ranks write their batches' files and nothing is
    assembled; a restarted run skips every batch whose files are all there. Returns the complete corruptions."""
    out, pool = Path(out), pool or CorruptionPool(1)
    total = len(base) if n is None else min(n, len(base))
    with _prepared(base, out, parameters=parameters, seed=seed, total=total, reencode=reencode, overwrite=overwrite,
                   shard=shard):
        quality = reencode_quality(parameters, reencode)
        mine = list(shard.batch_indices(total, batch_size))
        complete = []
        for name in corruptions:
            for severity in SEVERITIES:
                def target(i: int, severity: int = severity) -> Path:
                    file = base.files[i][0]
                    path = out / name / str(severity) / file.parent.name / file.name
                    return path if quality is not None else path.with_suffix(".png")

                def finished(b: int) -> bool:
                    return not overwrite and all(target(i).is_file()
                                                 for i in range(b * batch_size, min(total, (b + 1) * batch_size)))
                pending = [b for b in mine if not finished(b)]
                if pending:
                    order = np.concatenate([np.arange(b * batch_size, min(total, (b + 1) * batch_size))
                                            for b in pending])
                    jobs = (Job(images.permute(0, 2, 3, 1).numpy(), name, severity, b * batch_size)
                            for b, (images, _) in zip(pending, base.batches(batch_size, order=order)))
                    ticks = iter(progress(range(len(pending)), total=len(pending), desc=f"{name} {severity}"))
                    for b, batch in zip(pending, pool.corrupted(jobs, parameters=parameters, seed=seed, device=device,
                                                                reencode=False)):
                        for i, image in zip(range(b * batch_size, total), batch):
                            _save_image(target(i), image, quality)
                        next(ticks, None)
            if shard.world == 1 or all(target(i, s).is_file() for s in SEVERITIES for i in range(total)):
                complete.append(out / name)  # the other ranks' files too
    return complete


def _save_image(path: Path, image: np.ndarray, quality: int | None) -> None:
    buffer = io.BytesIO()
    if quality is not None:  # as make_imagenet_c.py saves (optimize changes the entropy coding only)
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality, optimize=True)
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())
