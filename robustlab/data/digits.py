"""scikit-learn's handwritten digits (real data shipped with the library) as 32x32 RGB images."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from robustlab.data.base import ArrayImageSet
from robustlab.errors import RobustlabError

SIZE = 32
TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits_split(split: str) -> ArrayImageSet:
    """The fixed stratified split (25% test, seed 0) of the 1797 8x8 digits, upsampled bilinearly to 32x32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise RobustlabError(f"digits has splits train and test, not {split!r}")
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    idx = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                           stratify=bunch.target)
    chosen = np.sort(train_idx if split == "train" else test_idx)
    return ArrayImageSet(np.ascontiguousarray(images[chosen]), bunch.target[chosen], name="digits", split=split,
                         num_classes=10)
