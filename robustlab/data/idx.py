"""The MNIST family's IDX files (MNIST, Fashion-MNIST) as 32x32 RGB images, and the built-in Fashion-MNIST subset.

Images are zero-padded by 2 pixels to 32x32 and the grey channel is replicated to three, so that the CIFAR
architectures and the CIFAR corruption parameters apply unchanged.
"""
from __future__ import annotations

import gzip
import io
import math
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from robustlab.data.base import ArrayImageSet
from robustlab.errors import RobustlabError

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803 (uint8, 3 dims), 0x00000801 (uint8, 1 dim)
PAD = 2  # 28x28 -> 32x32
# MNIST's training images take 47 MB; a header announcing more than this is damage or a decompression bomb
MAX_IDX_BYTES = 1 << 30
READ_PIECE = 1 << 24
PREFIX = {"train": "train", "test": "t10k"}
# where torchvision keeps them (`<root>/FashionMNIST/raw/`), besides the folder itself (Debian's layout)
SUBFOLDERS = {"fashion-mnist": ("", "raw", "FashionMNIST/raw"), "mnist": ("", "raw", "MNIST/raw")}
SUBSET_PACKAGE = "robustlab.data.fashion_subset"
SUBSET_NOTICE = ("dataset fashion-mnist: the built-in subset ({n} {split} images of Fashion-MNIST, MIT license); "
                 "pass --data-dir for the full set")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file (optionally gzip-compressed) as a uint8 array, checking its magic number and size. The header
    is read first, then exactly the bytes it announces (a compressed file is never decompressed further)."""
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            return _read_idx(f, path, magic)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise RobustlabError(f"{path} cannot be read ({e}); copy the file again") from None


def _read_idx(f: io.BufferedIOBase, path: Path, magic: int) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4 or int.from_bytes(head, "big") != magic:
        found = f"0x{int.from_bytes(head, 'big'):08x}" if len(head) == 4 else "nothing"
        raise RobustlabError(f"{path} is not an IDX {'image' if magic == IMAGES_MAGIC else 'label'} file (magic "
                             f"{found}, expected 0x{magic:08x}); point --data-dir at the MNIST-format files")
    dims = head[3]
    sizes = f.read(4 * dims)
    if len(sizes) < 4 * dims:
        raise RobustlabError(f"{path} ends inside its header; copy the file again")
    shape = tuple(int.from_bytes(sizes[4 * i:4 * i + 4], "big") for i in range(dims))
    size = math.prod(shape)  # a Python int: an int64 product of 2^22 x 2^21 x 2^21 wraps to 0
    announced = f"its header announces {'x'.join(map(str, shape))} = {size} bytes"
    if size > MAX_IDX_BYTES:
        raise RobustlabError(f"{path}: {announced}, more than an MNIST-family file holds (at most "
                             f"{MAX_IDX_BYTES}); copy the file again")
    data = bytearray()
    while len(data) < size:  # in pieces: memory grows with the bytes there are, not with those announced
        piece = f.read(min(size - len(data), READ_PIECE))
        if not piece:
            raise RobustlabError(f"{path} is truncated: {announced}, it holds only {len(data)}; copy the file "
                                 "again")
        data += piece
    if f.read(1):
        raise RobustlabError(f"{path} is padded: {announced}, it holds more than that; copy the file again")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def idx_files(root: Path, dataset: str, split: str) -> tuple[Path, Path]:
    """The images and labels file of a split under root (or its torchvision `raw/` folders)."""
    if split not in PREFIX:
        raise RobustlabError(f"{dataset} has splits train and test, not {split!r}")
    stems = (f"{PREFIX[split]}-images-idx3-ubyte", f"{PREFIX[split]}-labels-idx1-ubyte")
    for sub in SUBFOLDERS[dataset]:
        images, labels = _find(root / sub, stems[0]), _find(root / sub, stems[1])
        if images is not None and labels is not None:
            return images, labels
    raise RobustlabError(f"{root} holds no {stems[0]}[.gz] and {stems[1]}[.gz] (looked in "
                         f"{', '.join(str(root / s) for s in SUBFOLDERS[dataset])}); point --data-dir at the folder "
                         "holding them")


def images_32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) grey -> (N, 32, 32, 3): zero padding of 2, grey replicated."""
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return np.repeat(padded[..., None], 3, axis=3)


def load_idx_pair(images_path: Path, labels_path: Path, *, name: str, split: str) -> ArrayImageSet:
    images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise RobustlabError(f"{images_path} holds {images.ndim}-d data, not N x rows x columns images")
    if labels.ndim != 1 or len(labels) != len(images):
        raise RobustlabError(f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} "
                             "images; use the files of one split")
    if labels.size and labels.max() > 9:
        raise RobustlabError(f"{labels_path}: label {int(labels.max())} is outside 0..9; is it an MNIST-family file?")
    # a mirrored garment is the same garment; a mirrored digit is not
    return ArrayImageSet(images_32(images), labels.astype(np.int64), name=name, split=split, num_classes=10,
                         hflip=name == "fashion-mnist")


def load_mnist_family(dataset: str, data_dir: Path | None, split: str) -> ArrayImageSet:
    """MNIST or Fashion-MNIST from IDX files; without data_dir, Fashion-MNIST's built-in subset."""
    if data_dir is None:
        if dataset != "fashion-mnist":
            raise RobustlabError(f"dataset {dataset} is read from disk: pass --data-dir (nothing is downloaded)")
        return fashion_subset(split)
    images, labels = idx_files(data_dir, dataset, split)
    return load_idx_pair(images, labels, name=dataset, split=split)


def fashion_subset(split: str) -> ArrayImageSet:
    """The seeded subset of Fashion-MNIST shipped in the package (see its README)."""
    idx_files_of = idx_files(Path(str(resources.files(SUBSET_PACKAGE))), "fashion-mnist", split)
    data = load_idx_pair(*idx_files_of, name="fashion-mnist", split=f"{split}-subset")
    data.notice = SUBSET_NOTICE.format(n=len(data), split=split)
    return data
