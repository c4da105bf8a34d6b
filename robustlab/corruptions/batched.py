"""Corruptions computed on whole batches with torch (CPU or GPU).

Each function takes x: (N, 3, H, W) floats in [0, 1], the severity's parameter and one numpy Generator per
image (all randomness is drawn per image on the CPU, so results do not depend on batch size or device),
and returns floats on the 0..255 scale, unclipped; the engine clips and truncates to uint8 as the
published generators do. Written from the formulas of Hendrycks & Dietterich's benchmark code.
"""
from __future__ import annotations

import math
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
    counts = np.stack([r.poisson(l) for r, l in zip(rngs, lam)])
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


def motion_kernel(radius: int, sigma: float, angle: float, max_shift: int) -> np.ndarray:
    """Gaussian-weighted taps along a line at `angle` degrees, as a (2R+1)^2 correlation kernel (R = 2 radius)."""
    width = 2 * radius + 1
    taps = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    py, px = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(py, px)
    size = 2 * width + 1
    kernel = np.zeros((size, size), dtype=np.float64)
    for i, weight in enumerate(taps):
        dy, dx = -math.ceil(i * py / hyp - 0.5), -math.ceil(i * px / hyp - 0.5)
        if abs(dy) >= max_shift or abs(dx) >= max_shift:
            break  # the motion left the image
        kernel[width - dy, width - dx] += weight  # out[h, w] += weight * x[h - dy, w - dx]
    return kernel


def motion_blur(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    n, ch, h, w = x.shape
    angles = [r.uniform(-45, 45) for r in rngs]
    kernels = torch.from_numpy(np.stack([motion_kernel(int(c[0]), c[1], a, min(h, w)) for a in angles])).to(x)
    r = (kernels.shape[-1] - 1) // 2
    # shifts replicate the edge rows/columns, i.e. replicate padding; one grouped conv with a kernel per image
    y = F.pad(x.reshape(1, n * ch, h, w), (r, r, r, r), mode="replicate")
    weight = kernels.repeat_interleave(ch, dim=0).unsqueeze(1)
    return F.conv2d(y, weight, groups=n * ch).reshape(n, ch, h, w) * 255


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
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(hsv)
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        out[:, 0][m], out[:, 1][m], out[:, 2][m] = r[m], g[m], b[m]
    return out


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


def box_weights(in_size: int, out_size: int) -> torch.Tensor:
    """PIL's BOX resampling coefficients as an (out, in) matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        for j in range(lo, hi):
            u = (j - center + 0.5) / filterscale
            m[o, j] = 1.0 if -0.5 <= u < 0.5 else 0.0
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
