"""The dataset interface the runner reads: uint8 NCHW batches and int64 labels."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np
import torch

from robustlab.data.npy import NpyRows
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, H, W), int64 labels (N,)


def check_pixels(images: np.ndarray | torch.Tensor, where: str) -> None:
    """Refuse images that are not uint8 pixels 0..255, naming the dtype and range found and the conversion."""
    if images.dtype in (np.uint8, torch.uint8):
        return
    dtype = str(images.dtype).removeprefix("torch.")
    if 0 in tuple(images.shape):
        found = f"an empty {dtype} array"
        fix = "store uint8 images"
    else:
        lo, hi = float(images.min()), float(images.max())
        found = f"{dtype} with values in [{lo:.4g}, {hi:.4g}]"
        fix = ("multiply by 255, round and store as uint8" if lo >= 0 and hi <= 1 else
               "round and store as uint8" if lo >= 0 and hi <= 255 else "rescale to 0..255 and store as uint8")
    raise RobustlabError(f"{where}: images are {found}, not uint8 pixels 0..255; {fix}")


def check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, where: str, first: int = 0) -> None:
    """Refuse a label outside 0..num_classes-1, naming it and its image (`first`: the index of labels[0])."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise RobustlabError(f"{where}: label {int(labels[bad[0]])} is outside 0..{num_classes - 1} (image "
                             f"{first + bad[0]}); use the labels that belong to these images, or the right --dataset")


def to_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW -> float32 in [0, 1] on the device (the transfer stays uint8: 4x less to copy)."""
    check_pixels(images, "image batch")
    return images.to(device, non_blocking=True).float().div_(255)


class ImageSet(ABC):
    """A labelled image split. `n` limits every reader to its first n images."""

    name: str
    split: str
    num_classes: int
    image_size: tuple[int, int]
    notice: str | None = None  # what a user should know about this set (a built-in subset, ...)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def label_array(self, n: int | None = None) -> np.ndarray:
        """The labels of the first n images (all by default), without reading any image."""

    @abstractmethod
    def batches(self, batch_size: int, n: int | None = None, order: np.ndarray | None = None, *,
                shard: Shard = Shard()) -> Iterator[Batch]:
        """Batches of the first n images, or of the images at `order` (a permutation, for training); with a
        shard, only its batches (shard.batch_indices), the others neither read nor decoded."""


class ArrayImageSet(ImageSet):
    """Images held as one uint8 NHWC array (CIFAR, digits), or read from a .npy file by rows (CIFAR-C blocks)."""

    def __init__(self, images: np.ndarray | NpyRows, labels: np.ndarray, *, name: str, split: str,
                 num_classes: int, hflip: bool = False) -> None:
        if isinstance(images, np.ndarray):  # a file's dtype is checked where it is opened
            check_pixels(images, name)
        self.images, self.labels = images, labels.astype(np.int64)
        self.name, self.split, self.num_classes = name, split, num_classes
        self.image_size = (int(images.shape[1]), int(images.shape[2]))
        self.hflip = hflip  # whether horizontal flips are a valid training augmentation

    def __len__(self) -> int:
        return len(self.labels)

    def label_array(self, n: int | None = None) -> np.ndarray:
        return self.labels[:n]

    def batches(self, batch_size: int, n: int | None = None, order: np.ndarray | None = None, *,
                shard: Shard = Shard()) -> Iterator[Batch]:
        stop = len(self) if n is None else min(n, len(self))
        for index in shard.batch_indices(stop, batch_size):
            i = index * batch_size
            j = min(i + batch_size, stop)
            idx = slice(i, j) if order is None else order[i:j]
            images = self.images[idx]
            if not images.flags.writeable:  # a read-only memory map: torch wants its own copy
                images = np.array(images)
            yield (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(self.labels[idx]))
