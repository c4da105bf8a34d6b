"""Write a corrupted copy of a split in the published CIFAR-10-C layout (<corruption>.npy, labels.npy)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from robustlab.corruptions.engine import corrupt
from robustlab.data.base import ImageSet
from robustlab.data.npy import NpyWriter
from robustlab.errors import RobustlabError
from robustlab.progress import ProgressFactory

SEVERITIES = (1, 2, 3, 4, 5)


def write_c_layout(base: ImageSet, out: str | os.PathLike, corruptions: Sequence[str], *, table: str, seed: int,
                   n: int | None, batch_size: int, device: torch.device, progress: ProgressFactory) -> list[Path]:
    """One uint8 (5N, H, W, 3) array per corruption, severities 1..5 in blocks of N, and labels.npy (5N)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobustlabError(f"cannot create {out} ({e.strerror}); pass a writable --out") from None
    total = len(base) if n is None else min(n, len(base))
    h, w = base.image_size
    labels = base.label_array(total)
    written = []
    steps = math.ceil(total / batch_size) * len(SEVERITIES)
    for name in corruptions:
        path = out / f"{name}.npy"
        bar = progress(range(steps), total=steps, desc=name)
        ticks = iter(bar)
        with NpyWriter(path, (5 * total, h, w, 3), np.uint8) as arr:  # the file appears only when complete
            for s in SEVERITIES:
                start = 0
                for images, _ in base.batches(batch_size, total):
                    batch = corrupt(images.permute(0, 2, 3, 1).numpy(), name, s, table=table, seed=seed,
                                    start=start, device=device)
                    arr.append(batch)
                    start += len(batch)
                    next(ticks, None)
        written.append(path)
    np.save(out / "labels.npy", np.tile(labels.astype(np.int64), 5))
    return written
