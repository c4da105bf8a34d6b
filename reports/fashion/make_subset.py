"""Write the built-in Fashion-MNIST subset (robustlab/data/fashion_subset/): 200 images per class of each split,
drawn with a fixed seed from the full IDX files (Debian's dataset-fashion-mnist or torchvision's raw folder).

    python reports/fashion/make_subset.py /usr/share/datasets/fashion-mnist
"""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

from robustlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, PREFIX, idx_files, read_idx

PER_CLASS = 200
SEED = 0
OUT = Path(__file__).resolve().parents[2] / "robustlab" / "data" / "fashion_subset"


def write_idx(path: Path, data: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: the same bytes on every run
        f.write(header + data.astype(np.uint8).tobytes())


def main(root: str) -> None:
    rng = np.random.default_rng(SEED)
    for split in ("train", "test"):
        images_path, labels_path = idx_files(Path(root), "fashion-mnist", split)
        images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
        chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False)
                                         for c in range(10)]))
        write_idx(OUT / f"{PREFIX[split]}-images-idx3-ubyte.gz", images[chosen], IMAGES_MAGIC)
        write_idx(OUT / f"{PREFIX[split]}-labels-idx1-ubyte.gz", labels[chosen], LABELS_MAGIC)
        print(f"{split}: {len(chosen)} of {len(labels)} images")


if __name__ == "__main__":
    main(sys.argv[1])
