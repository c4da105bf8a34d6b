"""Corruptions computed one image at a time with numpy/scipy/OpenCV (inherently per-image algorithms).

Each function takes one (H, W, 3) float64 image in [0, 1], the severity's parameter and a numpy Generator,
and returns the 0..255 scale, unclipped (the engine clips and truncates). Written from the formulas of
Hendrycks & Dietterich's benchmark code, generalized from square 32/224 images to any H x W.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from robustlab.corruptions.batched import clipped_zoom, motion_kernel
from robustlab.errors import RobustlabError


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian (mode 'nearest', truncate 4), over the two spatial axes only."""
    sig = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma=sig, mode="nearest", truncate=4.0)


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114])  # OpenCV's RGB2GRAY weights


def snow(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    import cv2
    h, w = x.shape[:2]
    layer: np.ndarray = rng.normal(loc=c[0], scale=c[1], size=(h, w))
    layer = clipped_zoom(torch.from_numpy(layer)[None, None], c[2])[0, 0].numpy()
    layer[layer < c[3]] = 0
    layer = np.uint8(np.clip(layer, 0, 1) * 255).astype(np.float64)
    kernel = motion_kernel(int(c[4]), c[5], rng.uniform(-135, -45), min(h, w))
    layer = cv2.filter2D(layer, -1, kernel, borderType=cv2.BORDER_REPLICATE)
    # the published code reads ImageMagick's blurred layer back as an 8-bit PNG (cv2.imdecode(...) / 255.): the
    # layer is quantized; floating it made snow 0.03-0.5 grey levels brighter on average (an audit against the
    # published code found flooring gives 99.8-100% identical values)
    layer = np.floor(np.clip(layer, 0, 255)) / 255
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _gray(x)[..., None] * 1.5 + 0.5)
    return (x + layer[..., None] + np.rot90(layer, k=2)[..., None]) * 255


@lru_cache(maxsize=16)
def frost_texture(index: int, scale: float) -> np.ndarray:
    """imagecorruptions' frost photographs (RGB uint8), rescaled by `scale`."""
    import cv2
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    spec = importlib.util.find_spec("imagecorruptions")  # locate the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise RobustlabError("frost needs the photographs shipped with imagecorruptions: pip install imagecorruptions")
    path = Path(spec.submodule_search_locations[0]) / "frost" / names[index]
    bgr = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RobustlabError(f"{path} is not an image OpenCV can decode; reinstall imagecorruptions")
    if scale != 1:
        bgr = cv2.resize(bgr, (0, 0), fx=scale, fy=scale)
    return bgr[..., ::-1].copy()


def frost(x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    import cv2
    texture = frost_texture(int(rng.integers(5)), c[2])
    h, w = x.shape[:2]
    if texture.shape[0] <= h or texture.shape[1] <= w:  # enlarge the texture to cover the image
        f = max((h + 1) / texture.shape[0], (w + 1) / texture.shape[1])
        texture = cv2.resize(texture, (0, 0), fx=f, fy=f)
    top = int(rng.integers(0, texture.shape[0] - h))
    left = int(rng.integers(0, texture.shape[1] - w))
    return c[0] * x * 255 + c[1] * texture[top:top + h, left:left + w]


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] of side `mapsize` (a power of two)."""
    m = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[0:mapsize:step, 0:mapsize:step]
        sq = corners + np.roll(corners, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        m[half:mapsize:step, half:mapsize:step] = wibbled_mean(sq)
        dr = m[half:mapsize:step, half:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        m[0:mapsize:step, half:mapsize:step] = wibbled_mean(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1))
        m[half:mapsize:step, 0:mapsize:step] = wibbled_mean(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0))
        step //= 2
        wibble /= wibbledecay
    m -= m.min()
    return m / m.max()


def fog(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    mapsize = 1 << (max(h, w) - 1).bit_length()
    max_val = x.max()
    x = x + c[0] * plasma_fractal(mapsize, c[1], rng)[:h, :w, None]
    return x * max_val / (max_val + c[0]) * 255


def elastic_transform(x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    import cv2
    h, w = x.shape[:2]
    alpha, sigma, jitter = (v * min(h, w) for v in c)  # the parameter sets hold fractions of the image side
    img: np.ndarray = x.astype(np.float32)
    centre = np.array([h, w], np.float32) // 2
    size = min(h, w) // 3
    pts1 = np.array([centre + size, [centre[0] + size, centre[1] - size], centre - size], np.float32)
    pts2 = pts1 + rng.uniform(-jitter, jitter, size=pts1.shape).astype(np.float32)
    img = cv2.warpAffine(img, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.stack([ndimage.map_coordinates(img[..., k], [yy + dy, xx + dx], order=1, mode="reflect")
                    for k in range(img.shape[2])], axis=-1)
    return out * 255


def spatter(x: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    import cv2
    x = x.astype(np.float32)
    liquid = rng.normal(loc=c[0], scale=c[1], size=x.shape[:2])
    liquid = ndimage.gaussian_filter(liquid, c[2], mode="nearest", truncate=4.0)
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water drops: pale turquoise, shaded by the distance to the drops' edges
        liquid8 = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid8, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = liquid8.astype(np.float32) * dist
        m = m / max(float(m.max()), 1e-12) * c[4]
        # the published code adds (175, 238, 238) to the channels in the image's own (RGB) order
        color = np.array([175, 238, 238], dtype=np.float32) / 255
        return (x + m[..., None] * color) * 255
    mask = ndimage.gaussian_filter(np.where(liquid > c[3], 1.0, 0.0), c[4], mode="nearest", truncate=4.0)
    mask[mask < 0.8] = 0
    mud = np.array([63, 42, 20], dtype=np.float32) / 255 * mask[..., None]
    return (x * (1 - mask[..., None]) + mud) * 255
