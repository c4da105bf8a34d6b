"""Corruptions computed on whole batches with torch (CPU or GPU).

Each function takes x: (N, 3, H, W) floats in [0, 1], the severity's parameter and one numpy Generator per
image (all randomness is drawn per image on the CPU, so results do not depend on batch size or device),
and returns floats on the 0..255 scale, unclipped; the engine clips and truncates to uint8 as the
published generators do. Written from the formulas of Hendrycks & Dietterich's benchmark code.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Rngs = Sequence[np.random.Generator]


def _per_image(rngs: Rngs, draw, like: torch.Tensor) -> torch.Tensor:
    """Stack one numpy draw per image (shape of one image) as a tensor like `like`."""
    return torch.from_numpy(np.stack([draw(r) for r in rngs])).to(like)


def gaussian_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    noise = _per_image(rngs, lambda r: r.standard_normal(x.shape[1:], dtype=np.float32), x)
    return (x + c * noise).clamp_(0, 1) * 255


def shot_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    lam = (x * c).cpu().double().numpy()
    counts = np.stack([r.poisson(rate) for r, rate in zip(rngs, lam)])
    return (torch.from_numpy(counts).to(x) / c).clamp_(0, 1) * 255


def impulse_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    # salt and pepper in equal shares on a fraction c of all values (skimage's 's&p', per channel value)
    u = _per_image(rngs, lambda r: r.random((2, *x.shape[1:]), dtype=np.float32), x)
    flipped, salt = u[:, 0] < c, u[:, 1] < 0.5
    out = x.clone()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out * 255


def speckle_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    noise = _per_image(rngs, lambda r: r.standard_normal(x.shape[1:], dtype=np.float32), x)
    return (x + x * c * noise).clamp_(0, 1) * 255


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's support
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable(x: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
    n, ch, h, w = x.shape
    r = (len(k) - 1) // 2
    k = k.to(x)
    y = F.pad(x.reshape(n * ch, 1, h, w), (r, r, r, r), mode=mode)
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(n, ch, h, w)


def gaussian_blur(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    # skimage.filters.gaussian: scipy's filter with mode 'nearest' (edge replication), truncate 4
    return _separable(x, _gaussian_kernel(c), "replicate").clamp_(0, 1) * 255


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The anti-aliased disk of the defocus blur (a 2-D Gaussian-smoothed binary disk, summing to 1)."""
    import cv2
    half = 8 if radius <= 8 else int(math.ceil(radius))
    ksize = (3, 3) if radius <= 8 else (5, 5)
    coords = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(coords, coords)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def defocus_blur(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    k = torch.from_numpy(disk_kernel(*c)).to(x)
    n, ch, h, w = x.shape
    r = (k.shape[0] - 1) // 2
    # cv2.filter2D's default border is reflect-101, which is torch's 'reflect'
    y = F.pad(x.reshape(n * ch, 1, h, w), (r, r, r, r), mode="reflect")
    return F.conv2d(y, k.view(1, 1, *k.shape)).reshape(n, ch, h, w).clamp_(0, 1) * 255


def motion_taps(radius: int, sigma: float, angle: float, max_shift: int) -> list[tuple[int, int, float]]:
    """(dy, dx, weight) of the motion blur: Gaussian weights along a line at `angle` degrees, where
    out[h, w] = sum weight * x[h - dy, w - dx] with edges replicated; taps stop where the motion leaves the image."""
    width = 2 * radius + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    py, px = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(py, px)
    taps = []
    for i, weight in enumerate(weights):
        dy, dx = -math.ceil(i * py / hyp - 0.5), -math.ceil(i * px / hyp - 0.5)
        if abs(dy) >= max_shift or abs(dx) >= max_shift:
            break
        taps.append((dy, dx, float(weight)))
    return taps


def motion_blur(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    n, ch, h, w = x.shape
    width = 2 * int(c[0]) + 1
    dy, dx = np.zeros((n, width), dtype=np.int64), np.zeros((n, width), dtype=np.int64)
    wt = np.zeros((n, width))  # taps after the motion left the image keep weight 0
    for i, r in enumerate(rngs):
        for t, (a, b, weight) in enumerate(motion_taps(int(c[0]), c[1], r.uniform(-45, 45), min(h, w))):
            dy[i, t], dx[i, t], wt[i, t] = a, b, weight
    # a sum of whole-pixel shifts with the edge rows/columns replicated (a gather per tap, not a dense
    # (2W+1)^2 convolution, which is a thousand times slower on CPU)
    dy, dx, wt = (torch.from_numpy(a).to(x.device) for a in (dy, dx, wt))
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    out = torch.zeros_like(x)
    for t in range(width):
        ri = (rows[None] - dy[:, t, None]).clamp_(0, h - 1)[:, None, :, None].expand(n, ch, h, w)
        ci = (cols[None] - dx[:, t, None]).clamp_(0, w - 1)[:, None, None, :].expand(n, ch, h, w)
        out += wt[:, t].to(x).view(n, 1, 1, 1) * x.gather(2, ri).gather(3, ci)
    return out * 255


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """skimage.color.rgb2hsv for (N, 3, H, W) in [0, 1]."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = delta.clamp_min(1e-12)
    h = torch.where(r == v, (g - b) / safe, torch.where(g == v, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """skimage.color.hsv2rgb for (N, 3, H, W)."""
    h, s, v = hsv.unbind(1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    i = (i.long() % 6).unsqueeze(0)
    pick = lambda *c: torch.stack(c).gather(0, i).squeeze(0)  # noqa: E731  (the sextant's component)
    return torch.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], 1)


def brightness(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv[:, 2] = (hsv[:, 2] + c).clamp_(0, 1)
    return hsv_to_rgb(hsv).clamp_(0, 1) * 255


def saturate(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv[:, 1] = (hsv[:, 1] * c[0] + c[1]).clamp_(0, 1)
    return hsv_to_rgb(hsv).clamp_(0, 1) * 255


def contrast(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp_(0, 1) * 255


@lru_cache(maxsize=64)
def box_weights(in_size: int, out_size: int) -> torch.Tensor:
    """PIL's BOX resampling coefficients as an (out, in) matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    ss = 1.0 / filterscale
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        for j in range(lo, hi):
            u = (j - center + 0.5) * ss  # as Pillow computes it, with its box filter's (-0.5, 0.5] support
            m[o, j] = 1.0 if -0.5 < u <= 0.5 else 0.0
        total = m[o].sum()
        if total > 0:
            m[o] /= total
    return m


def _pil_box_resize(x255: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """PIL's Image.resize(BOX) on 8-bit images: horizontal pass, round to uint8, vertical pass, round."""
    h, w = x255.shape[-2:]
    if out_w != w:
        x255 = torch.floor(x255 @ box_weights(w, out_w).T.to(x255) + 0.5).clamp_(0, 255)
    if out_h != h:
        x255 = torch.floor(box_weights(h, out_h).to(x255) @ x255 + 0.5).clamp_(0, 255)
    return x255


def pixelate(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    h, w = x.shape[-2:]
    x255 = torch.round(x.double() * 255)
    small = _pil_box_resize(x255, int(h * c), int(w * c))
    return _pil_box_resize(small, h, w).to(x)
