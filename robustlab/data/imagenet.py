"""ImageNet-style class folders (`<root>/<wnid>/<file>.JPEG`), decoded and center-cropped to 224x224."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from robustlab.data.base import Batch, ImageSet
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError

EXTENSIONS = {".jpeg", ".jpg", ".png"}
RESIZE, CROP = 256, 224
# longer side / shorter side: far beyond photographs, while a 6000x1 image would be resized to 1,536,000x256 (1.2 GB)
# for a 224x224 crop
MAX_ASPECT = 50


def list_class_folders(root: Path) -> list[tuple[Path, int]]:
    """(file, label) for every image, labels the sorted index of the class folder."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    files = [(f, label) for label, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in EXTENSIONS]
    if not files:
        raise RobustlabError(f"no images in {root}: expected class folders <wnid>/<file>.JPEG; check --data-dir")
    return files


class _Decoded(Dataset):
    def __init__(self, files: list[tuple[Path, int]], resize: bool = True) -> None:
        self.files, self.resize = files, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        """The image, its label, and '' (or why it is refused or cannot be decoded, with a blank image: an exception
        raised in a DataLoader worker reaches the main process wrapped in the worker's traceback)."""
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.v2 import functional as TF
        path, label = self.files[i]
        blank = torch.zeros(3, CROP, CROP, dtype=torch.uint8)
        try:
            with Image.open(path) as img:  # reads the header only: the size is known before decoding
                if max(img.size) > MAX_ASPECT * min(img.size):
                    return blank, label, (f"{path} is {img.size[0]}x{img.size[1]} pixels, an aspect ratio over "
                                          f"{MAX_ASPECT}:1 that resizing its shorter side to {RESIZE} would blow up; "
                                          "remove or replace the file")
                img = img.convert("RGB")
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:  # a bomb is not an OSError
            return blank, label, f"cannot decode {path} ({str(e).splitlines()[0]}); remove or replace the file"
        # the standard ImageNet evaluation transform: shorter side to 256 (bilinear), center 224 crop
        img = TF.resize(img, RESIZE) if self.resize else img
        return TF.pil_to_tensor(TF.center_crop(img, [CROP, CROP])), label, ""


class FolderImageSet(ImageSet):
    """A split stored as class folders; decoding runs in DataLoader workers. Images get the standard evaluation
    transform (shorter side to 256, center 224 crop), or only the center crop with `resize=False`: ImageNet-C's files
    are 224x224 already (make_imagenet_c.py resized and cropped before corrupting; Hendrycks' test code only
    center-crops them), and resizing them to 256 would blur every corruption."""

    def __init__(self, root: Path, *, name: str, split: str, workers: int = 2, resize: bool = True) -> None:
        self.files = list_class_folders(root)
        self.root, self.name, self.split, self.workers, self.resize = root, name, split, workers, resize
        self.num_classes = self.files[-1][1] + 1
        self.image_size = (CROP, CROP)

    def __len__(self) -> int:
        return len(self.files)

    def label_array(self, n: int | None = None) -> np.ndarray:
        return np.array([label for _, label in self.files[:n]], dtype=np.int64)

    def batches(self, batch_size: int, n: int | None = None, order: np.ndarray | None = None, *,
                shard: Shard = Shard()) -> Iterator[Batch]:
        files = self.files if order is None else [self.files[i] for i in order]
        files = files if n is None else files[:n]
        # only this shard's batches go to the workers; each is whole but the split's last, so they batch alike
        files = [f for b in shard.batch_indices(len(files), batch_size)
                 for f in files[b * batch_size:(b + 1) * batch_size]]
        loader = DataLoader(_Decoded(files, self.resize), batch_size=batch_size, num_workers=self.workers,
                            persistent_workers=False)
        for images, labels, problems in loader:
            problem = next((p for p in problems if p), None)
            if problem:
                raise RobustlabError(problem)
            yield images, labels.to(torch.int64)


def load_imagenet(data_dir: str | Path | None, split: str) -> FolderImageSet:
    if data_dir is None:
        raise RobustlabError("dataset imagenet is read from disk: pass --data-dir (nothing is downloaded)")
    data_dir = Path(data_dir)
    if split not in ("val", "train"):
        raise RobustlabError(f"imagenet has splits val and train, not {split!r}")
    root = data_dir / split if (data_dir / split).is_dir() else data_dir
    return FolderImageSet(root, name="imagenet", split=split)
