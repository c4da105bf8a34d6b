"""Corruptions computed on whole uint8 batches by C libraries: the 8-bit resampling and codec of the published
code (Pillow, libjpeg), byte lookup tables, and glass blur's pixel loop compiled with numba.

Each function takes (N, H, W, 3) uint8 images, the severity's parameter and one numpy Generator per image, and
returns (N, H, W, 3) uint8. They run on the CPU: Pillow, libjpeg and cv2.LUT process an image several times
faster than torch's elementwise float passes over it, and stay byte-identical to the published generators. On an
accelerator the engine runs batched.py's torch versions of contrast and pixelate instead (the same bytes, tested
on the CPU); JPEG stays here, since a GPU codec (nvJPEG) would not give libjpeg's bytes.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numba
import numpy as np
from PIL import Image
from scipy import ndimage

Rngs = Sequence[np.random.Generator]


def _gaussian_batch(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian (mode 'nearest', truncate 4) of each (H, W, 3) image of a batch: ndimage filters
    axis by axis, so sigma 0 on the batch and channel axes gives each image's result exactly."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)


@numba.njit(cache=True)
def _shuffle_pixels(images: np.ndarray, offsets: np.ndarray, delta: int, iterations: int) -> None:
    """The published pixel "swaps" of each image, in place: bottom-right to top-left, offsets (dx, dy) in order."""
    n, h, w, channels = images.shape
    k = 0
    for m in range(n):
        for _ in range(iterations):
            for i in range(h - delta, delta, -1):
                for j in range(w - delta, delta, -1):
                    a, b = i + offsets[k, 1], j + offsets[k, 0]
                    k += 1
                    # the published `x[h, w], x[h', w'] = x[h', w'], x[h, w]` swaps numpy views of RGB pixels,
                    # so it only copies x[h', w'] into x[h, w]; CIFAR-10-C / ImageNet-C were made that way
                    for ch in range(channels):
                        images[m, i, j, ch] = images[m, a, b, ch]


def glass_blur(images: np.ndarray, c: tuple[float, int, int], rngs: Rngs) -> np.ndarray:
    """Gaussian blur, the published local pixel shuffle, Gaussian blur again (Hendrycks & Dietterich)."""
    sigma, delta, iterations = c
    _, h, w, _ = images.shape
    x = np.uint8(np.clip(_gaussian_batch(images / 255.0, sigma), 0, 1) * 255)
    # The published loop draws `integers(-delta, delta, size=2)` once per pixel. numpy's bounded integers take
    # their 32-bit words from the bit generator's own stream (next_uint32, buffered in the generator's state), so
    # one call per image returns the same numbers in the same order. The loop itself is sequential (a pixel may
    # copy one already moved): compiled with numba, 40-200x the Python loop's images/s (bench/glass_blur.py).
    count = iterations * len(range(h - delta, delta, -1)) * len(range(w - delta, delta, -1))
    offsets = np.concatenate([np.asarray(r.integers(-delta, delta, size=(count, 2)), dtype=np.int64)
                              for r in rngs])
    _shuffle_pixels(x, offsets, delta, iterations)
    return (np.clip(_gaussian_batch(x / 255.0, sigma), 0, 1) * 255).astype(np.uint8)  # clip, truncate: as published


def _box(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's Image.resize((width, height), BOX) of one (H, W, 3) uint8 array."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BOX))


def box_resize(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Image.resize((out_w, out_h), BOX) of each image. Pillow resizes the width, rounds to uint8, then resizes
    the height, each pass independent across rows (resp. columns); so each pass is one call on the whole batch,
    the images stacked (width pass) or side by side (height pass): two C calls per batch, not two per image."""
    n, h, w, _ = images.shape
    stacked = _box(images.reshape(n * h, w, 3), out_w, n * h)
    side_by_side = stacked.reshape(n, h, out_w, 3).transpose(1, 0, 2, 3).reshape(h, n * out_w, 3)
    return _box(side_by_side, n * out_w, out_h).reshape(out_h, n, out_w, 3).transpose(1, 0, 2, 3)


def box_enlarge_index(in_size: int, out_size: int) -> np.ndarray:
    """The source pixel of each output pixel when Pillow's BOX filter enlarges: its window holds one pixel, at
    (o + 0.5) * in / out rounded down (precompute_coeffs, in double), with weight 1 exactly."""
    return ((np.arange(out_size) + 0.5) * (in_size / out_size)).astype(np.intp)


def pixelate(images: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    # BOX down and BOX up, as the published code (imagecorruptions upscales with NEAREST, which agrees at 32 and
    # 224); the enlargement is a gather, 8x faster than Pillow's 3-tap resampling with two zero weights
    h, w = images.shape[1:3]
    small = box_resize(images, int(h * c), int(w * c))
    cols = np.take(small, box_enlarge_index(small.shape[2], w), axis=2)
    return np.take(cols, box_enlarge_index(small.shape[1], h), axis=1)


def jpeg_compression(images: np.ndarray, c: int, rngs: Rngs) -> np.ndarray:
    # libjpeg through OpenCV: byte-identical to the published PIL save(quality=c) and reopen (libjpeg-turbo,
    # 4:2:0, the standard tables), at a quarter of PIL's per-image overhead
    params = [cv2.IMWRITE_JPEG_QUALITY, int(c)]
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), params)[1],
                                  cv2.IMREAD_COLOR_RGB) for im in images])


def contrast(images: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    # (x - mean) * c + mean maps each byte value of an image's channel to one output byte: a 256-entry table per
    # image and channel (float64, from the exact mean), applied by cv2.LUT
    h, w = images.shape[1:3]
    means = np.array([cv2.sumElems(im)[:3] for im in images]) / (255.0 * h * w)
    values = np.arange(256)[None, :, None] / 255.0
    tables = (np.clip((values - means[:, None]) * c + means[:, None], 0, 1) * 255).astype(np.uint8)
    out = np.empty_like(images)
    for im, table, o in zip(images, tables, out):
        cv2.LUT(im, table[:, None], dst=o)
    return out
