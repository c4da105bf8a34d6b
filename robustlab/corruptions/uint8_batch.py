"""Corruptions defined on 8-bit images, computed by the C libraries of the published code on whole uint8 batches.

Each function takes (N, H, W, 3) uint8 images, the severity's parameter and one numpy Generator per image, and
returns (N, H, W, 3) uint8. They run on the CPU whatever the engine's device: Pillow and libjpeg process an
image faster than torch's elementwise passes over it, and stay byte-identical to the published generators.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

Rngs = Sequence[np.random.Generator]


def _box_rows(rows: np.ndarray, width: int) -> np.ndarray:
    """Pillow's BOX resampling of (R, W, 3) uint8 rows to `width` columns."""
    return np.asarray(Image.fromarray(rows).resize((width, len(rows)), Image.BOX))


def box_resize(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Image.resize((out_w, out_h), BOX) of each image. Pillow resizes the width, rounds to uint8, then resizes
    the height with the same integer arithmetic; so each pass is one call on the whole batch stacked as rows,
    the height pass on the transposed images (two calls per batch instead of two per image)."""
    n, h, w, _ = images.shape
    wide = _box_rows(images.reshape(n * h, w, 3), out_w).reshape(n, h, out_w, 3)
    columns = np.ascontiguousarray(wide.transpose(0, 2, 1, 3)).reshape(n * out_w, h, 3)
    return _box_rows(columns, out_h).reshape(n, out_w, out_h, 3).transpose(0, 2, 1, 3)


def pixelate(images: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    h, w = images.shape[1:3]
    # BOX down and BOX up, as the published code (imagecorruptions upscales with NEAREST, which agrees at 32 and 224)
    return np.ascontiguousarray(box_resize(box_resize(images, int(h * c), int(w * c)), h, w))


def jpeg_compression(images: np.ndarray, c: int, rngs: Rngs) -> np.ndarray:
    # libjpeg through OpenCV: byte-identical to the published PIL save(quality=c) and reopen (libjpeg-turbo,
    # 4:2:0, the standard tables), at a quarter of PIL's per-image overhead
    params = [cv2.IMWRITE_JPEG_QUALITY, int(c)]
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), params)[1],
                                  cv2.IMREAD_COLOR_RGB) for im in images])
