"""Datasets: one registry from name to reader(data_dir, split) -> ImageSet."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from robustlab.data.base import ArrayImageSet, Batch, ImageSet, to_pixels
from robustlab.data.cifar import load_cifar
from robustlab.data.digits import load_digits_split
from robustlab.data.idx import load_mnist_family
from robustlab.data.imagenet import FolderImageSet, load_imagenet
from robustlab.errors import RobustlabError
from robustlab.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    reader: Callable[[Path | None, str], ImageSet]
    test_split: str
    needs_data_dir: bool
    summary: str


DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _spec in (
    DatasetSpec("cifar10", partial(load_cifar, "cifar10"), "test", True, "CIFAR-10 python pickles"),
    DatasetSpec("cifar100", partial(load_cifar, "cifar100"), "test", True, "CIFAR-100 python pickles"),
    DatasetSpec("imagenet", load_imagenet, "val", True, "ImageNet class folders, 224x224 center crop"),
    DatasetSpec("digits", lambda _dir, split: load_digits_split(split), "test", False,
                "scikit-learn handwritten digits at 32x32 (built in)"),
    DatasetSpec("fashion-mnist", partial(load_mnist_family, "fashion-mnist"), "test", False,
                "Fashion-MNIST IDX files padded to 32x32 RGB (built in: a 2,000-image subset per split)"),
    DatasetSpec("mnist", partial(load_mnist_family, "mnist"), "test", True, "MNIST IDX files padded to 32x32 RGB"),
):
    DATASETS.register(_spec.name, _spec)


def load_dataset(name: str, data_dir: str | Path | None = None, split: str | None = None) -> ImageSet:
    """Read a split (default: the evaluation split) of a registered dataset."""
    spec = DATASETS.get(name)
    if spec.needs_data_dir:
        if data_dir is None:
            raise RobustlabError(f"dataset {name} is read from disk: pass --data-dir (nothing is downloaded)")
        if not Path(data_dir).is_dir():
            raise RobustlabError(f"--data-dir {data_dir} is not a directory")
    data = spec.reader(Path(data_dir) if data_dir is not None else None, split or spec.test_split)
    if len(data) == 0:
        raise RobustlabError(f"dataset {name} ({data_dir}) holds no images in its {data.split} split; point "
                             "--data-dir at a copy with images")
    return data


__all__ = ["to_pixels", "ArrayImageSet", "Batch", "DATASETS", "DatasetSpec", "FolderImageSet", "ImageSet",
           "load_dataset"]
