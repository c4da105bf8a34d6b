"""Tiny datasets written in the real on-disk formats, and small models."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.checkpoints import save_checkpoint
from robustlab.models import ModelConfig, RobustModel, build_net
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD


def write_cifar(root: Path, *, classes: int = 10, n_test: int = 24, n_train: int = 0, seed: int = 0) -> Path:
    """CIFAR-10 (`cifar-10-batches-py/`) or CIFAR-100 (`cifar-100-python/`) pickles as torchvision stores them."""
    rng = np.random.default_rng(seed)
    label_key = "labels" if classes == 10 else "fine_labels"
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        return {b"batch_label": b"fixture", label_key.encode(): rng.integers(0, classes, n).tolist(),
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"filenames": [f"img{i}.png".encode() for i in range(n)]}

    names = (["test_batch"], [f"data_batch_{i}" for i in range(1, 6)]) if classes == 10 else (["test"], ["train"])
    for name in names[0]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(n_test), f)
    if n_train:
        for name in names[1]:
            with open(folder / name, "wb") as f:
                pickle.dump(batch(n_train), f)
    return folder


def write_imagenet(root: Path, *, classes: int = 3, per_class: int = 2, seed: int = 0) -> Path:
    """ImageNet val as class folders of JPEGs of assorted sizes."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = 240 + 10 * i, 300 - 10 * c
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.JPEG", quality=90)
    return root


def write_idx(root: Path, *, split: str = "test", n: int = 12, seed: int = 0, gz: bool = True) -> Path:
    """MNIST-family IDX files (`t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`) as Debian and
    torchvision's raw/ folder hold them."""
    import gzip
    rng = np.random.default_rng(seed)
    prefix = {"train": "train", "test": "t10k"}[split]
    root.mkdir(parents=True, exist_ok=True)
    for kind, magic, data in (("images-idx3", 2051, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                              ("labels-idx1", 2049, rng.integers(0, 10, n, dtype=np.uint8))):
        raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape) + data.tobytes()
        path = root / (f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
    return root


def tiny_model(arch: str = "sdnet18", *, num_classes: int = 10, size: int = 32, seed: int = 0,
               **kwargs) -> RobustModel:
    imagenet = size > 64
    cfg = ModelConfig(arch=arch, num_classes=num_classes, input_size=size,
                      mean=IMAGENET_MEAN if imagenet else CIFAR_MEAN, std=IMAGENET_STD if imagenet else CIFAR_STD,
                      dataset="imagenet" if imagenet else "cifar10",
                      arch_kwargs={"width": 0.125, "stem": "imagenet" if imagenet else "cifar", **kwargs})
    torch.manual_seed(seed)
    return RobustModel(build_net(cfg), cfg).eval()


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data")


@pytest.fixture
def sdnet_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "sdnet.pt"
    save_checkpoint(tiny_model("sdnet18"), path)
    return path
