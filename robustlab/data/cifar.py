"""CIFAR-10/100 read from the python pickles torchvision stores, needing only the files a split uses.

torchvision's readers verify md5 sums of every file, so they refuse test fixtures and partial copies.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from robustlab.data.base import ArrayImageSet, check_labels, check_pixels
from robustlab.errors import RobustlabError


class _Layout(TypedDict):
    """Where a CIFAR variant's pickles are (the folder, each split's files) and what they hold."""
    folder: str
    train: list[str]
    test: list[str]
    labels: str  # the key of the labels in a batch
    classes: int


LAYOUTS: dict[str, _Layout] = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "labels": "labels", "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "labels": "fine_labels",
                 "classes": 100},
}

# The numpy internals a pickled ndarray needs; anything else in the file is refused.
_SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
                 ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR pickle (python 2 or 3), keys as str; refuses pickles that reference anything but numpy."""
    try:
        with open(path, "rb") as f:
            raw = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise RobustlabError(f"{path} is not a CIFAR pickle ({e}); re-extract the dataset archive") from None
    if not isinstance(raw, dict):
        raise RobustlabError(f"{path} is not a CIFAR pickle (it holds a {type(raw).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def find_root(data_dir: Path, folder: str, first_file: str) -> Path:
    for root in (data_dir, data_dir / folder):
        if (root / first_file).is_file():
            return root
    raise RobustlabError(f"no {first_file} in {data_dir} or {data_dir / folder}; point --data-dir at the "
                         f"extracted {folder} folder (or its parent)")


def load_cifar(name: str, data_dir: str | Path, split: str) -> ArrayImageSet:
    layout = LAYOUTS[name]
    if split not in ("train", "test"):
        raise RobustlabError(f"{name} has splits train and test, not {split!r}")
    files = layout["train"] if split == "train" else layout["test"]
    root = find_root(Path(data_dir), layout["folder"], files[0])
    images, labels = [], []
    for fname in files:
        path = root / fname
        if not path.is_file():
            raise RobustlabError(f"{path} is missing; the {split} split of {name} needs {', '.join(files)}")
        batch = read_batch(path)
        if "data" not in batch or layout["labels"] not in batch:
            raise RobustlabError(f"{path} lacks 'data' or '{layout['labels']}'; is it a {name} file?")
        data = np.asarray(batch["data"])
        check_pixels(data, f"{path} 'data'")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise RobustlabError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[layout["labels"]], dtype=np.int64))
        check_labels(labels[-1], layout["classes"], f"{path} '{layout['labels']}'")
    return ArrayImageSet(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), name=name,
                         split=split, num_classes=layout["classes"], hflip=True)
