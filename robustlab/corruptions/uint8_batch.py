"""Corruptions computed on whole uint8 batches by C libraries: the 8-bit resampling and codec of the published
code (Pillow, libjpeg), per-byte lookups (cv2.LUT), and glass blur compiled with numba.

Each function takes (N, H, W, 3) uint8 images, the severity's parameter and one numpy Generator per image, and
returns (N, H, W, 3) uint8. They run on the CPU: Pillow, libjpeg and cv2.LUT process an image several times
faster than torch's elementwise float passes over it, and stay byte-identical to the published generators. On an
accelerator the engine runs batched.py's torch versions of contrast and pixelate instead (the same bytes, tested
on the CPU); JPEG stays here, since a GPU codec (nvJPEG) would not give libjpeg's bytes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numba
import numpy as np
from PIL import Image

Rngs = Sequence[np.random.Generator]
GLASS_OFFSETS_BYTES = 4 << 20  # glass blur's drawn pixel offsets per call of its compiled loop


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """numba.njit, its machine code cached on disk where numba finds a writable folder (beside this file, under
    $NUMBA_CACHE_DIR or the user's cache); on a read-only install and home it finds none, and the functions are
    compiled in every process instead of failing at import."""
    try:
        return numba.njit(cache=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(function)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights (radius truncate * sigma, rounded), computed as scipy computes
    them, to the last bit."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


@_compiled
def _gaussian_nearest(src: np.ndarray, tmp: np.ndarray, pad: np.ndarray, weights: np.ndarray,
                      channels: int) -> None:
    """scipy.ndimage.gaussian_filter(image, (sigma, sigma, 0), mode='nearest') of one image, in place, given as
    (H, W * C) float64 (tmp: the same shape, pad: (W + 2r) * C, scratch). Each output is the same arithmetic in
    the same order as ndimage's correlate1d for a symmetric kernel, x[0] w[0] + (x[-r] + x[r]) w[-r] + ... +
    (x[-1] + x[1]) w[-1], axis 0 then axis 1, so the bits agree; the loops run along rows so that they vectorize."""
    h, row = src.shape
    r = len(weights) // 2
    for i in range(h):
        for q in range(row):
            tmp[i, q] = src[i, q] * weights[r]
        for k in range(r, 0, -1):
            above, below = src[max(i - k, 0)], src[min(i + k, h - 1)]
            for q in range(row):
                tmp[i, q] += (above[q] + below[q]) * weights[r - k]
    edge = r * channels
    for i in range(h):
        line = tmp[i]
        pad[edge:edge + row] = line
        for q in range(edge):  # 'nearest': the first and last pixel repeated r times
            pad[q] = line[q % channels]
            pad[edge + row + q] = line[row - channels + q % channels]
        out = src[i]
        for q in range(row):
            out[q] = line[q] * weights[r]
        for k in range(r, 0, -1):
            left, right = edge - k * channels, edge + k * channels
            for q in range(row):
                out[q] += (pad[left + q] + pad[right + q]) * weights[r - k]


@_compiled
def _blur_to_uint8(image: np.ndarray, out: np.ndarray, weights: np.ndarray, channels: int, a: np.ndarray,
                   tmp: np.ndarray, pad: np.ndarray) -> None:
    """out = uint8(clip(gaussian(image / 255), 0, 1) * 255) of (H, W * C) rows: skimage's gaussian and the
    published truncation."""
    h, row = image.shape
    for i in range(h):
        for q in range(row):
            a[i, q] = image[i, q] / 255.0
    _gaussian_nearest(a, tmp, pad, weights, channels)
    for i in range(h):
        for q in range(row):
            out[i, q] = np.uint8(min(max(a[i, q], 0.0), 1.0) * 255.0)


@_compiled
def _glass_blur_batch(images: np.ndarray, offsets: np.ndarray, weights: np.ndarray, delta: int,
                      iterations: int) -> np.ndarray:
    """Blur, the published pixel "swaps" (bottom-right to top-left, offsets (dx, dy) in order), blur, per image."""
    n, h, w, channels = images.shape
    rows = images.reshape(n, h, w * channels)
    out = np.empty_like(rows)
    x = np.empty((h, w, channels), np.uint8)
    a, tmp = np.empty((h, w * channels)), np.empty((h, w * channels))
    pad = np.empty((w + len(weights)) * channels)
    k = 0
    for m in range(n):
        _blur_to_uint8(rows[m], x.reshape(h, w * channels), weights, channels, a, tmp, pad)
        for _ in range(iterations):
            for i in range(h - delta, delta, -1):
                for j in range(w - delta, delta, -1):
                    y, z = i + offsets[k, 1], j + offsets[k, 0]
                    k += 1
                    # the published `x[h, w], x[h', w'] = x[h', w'], x[h, w]` swaps numpy views of RGB pixels,
                    # so it only copies x[h', w'] into x[h, w]; CIFAR-10-C / ImageNet-C were made that way
                    for ch in range(channels):
                        x[i, j, ch] = x[y, z, ch]
        _blur_to_uint8(x.reshape(h, w * channels), out[m], weights, channels, a, tmp, pad)
    return out.reshape(n, h, w, channels)


def glass_blur(images: np.ndarray, c: tuple[float, int, int], rngs: Rngs) -> np.ndarray:
    """Gaussian blur, the published local pixel shuffle, Gaussian blur again (Hendrycks & Dietterich)."""
    sigma, delta, iterations = c
    _, h, w, _ = images.shape
    # The published loop draws `integers(-delta, delta, size=2)` once per pixel. numpy's bounded integers take
    # their 32-bit words from the bit generator's own stream (next_uint32, buffered in the generator's state), so
    # one call per image returns the same numbers in the same order. The loop itself is sequential (a pixel may
    # copy one already moved), so it is compiled with numba, and so are the two blurs around it: scipy's float64
    # filter reproduced operation for operation (bytes equal), without the whole-batch float temporaries.
    count = iterations * len(range(h - delta, delta, -1)) * len(range(w - delta, delta, -1))
    images, weights = np.ascontiguousarray(images), gaussian_kernel(sigma)
    # offsets for a few images at a time, so that they are still in cache when the loop reads them (at 224x224 an
    # image's offsets fill megabytes: drawing the whole batch's first ran slower)
    per = max(1, GLASS_OFFSETS_BYTES // max(1, count * 16))  # count is 0 on images of 2 delta + 1 pixels or less
    out = []
    for i in range(0, len(images), per):
        group = images[i:i + per]
        offsets = np.concatenate([np.asarray(rngs[i + k].integers(-delta, delta, size=(count, 2)), dtype=np.int64)
                                  for k in range(len(group))])
        out.append(_glass_blur_batch(group, offsets, weights, delta, iterations))
    return np.concatenate(out)


def _box(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's Image.resize((width, height), BOX) of one (H, W, 3) uint8 array."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


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
    # 224); the enlargement is a gather, much cheaper than Pillow's 3-tap resampling with two zero weights
    h, w = images.shape[1:3]
    small = box_resize(images, int(h * c), int(w * c))
    cols = np.take(small, box_enlarge_index(small.shape[2], w), axis=2)
    return np.take(cols, box_enlarge_index(small.shape[1], h), axis=1)


def jpeg_compression(images: np.ndarray, c: int, rngs: Rngs) -> np.ndarray:
    # libjpeg through OpenCV: byte-identical to the published PIL save(quality=c) and reopen (libjpeg-turbo,
    # 4:2:0, the standard quantization), at a quarter of PIL's per-image overhead
    params = [cv2.IMWRITE_JPEG_QUALITY, int(c)]
    return np.stack([_jpeg(im, params) for im in images])


def _jpeg(image: np.ndarray, params: list[int]) -> np.ndarray:
    """One RGB uint8 image encoded as JPEG and decoded again."""
    decoded = cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)[1],
                           cv2.IMREAD_COLOR_RGB)
    assert decoded is not None  # libjpeg decodes what it has just encoded
    return decoded


def contrast(images: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    # (x - mean) * c + mean maps each byte value of an image's channel to one output byte: a 256-entry lookup per
    # image and channel (float64, from the exact mean), applied by cv2.LUT
    h, w = images.shape[1:3]
    means = np.array([cv2.sumElems(im)[:3] for im in images]) / (255.0 * h * w)
    values = np.arange(256)[None, :, None] / 255.0
    lookups = (np.clip((values - means[:, None]) * c + means[:, None], 0, 1) * 255).astype(np.uint8)
    out = np.empty_like(images)
    for im, lookup, o in zip(images, lookups, out):
        cv2.LUT(im, lookup[:, None], dst=o)
    return out
