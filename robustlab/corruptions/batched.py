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
from scipy.fft import next_fast_len

Rngs = Sequence[np.random.Generator]


def _normal(rngs: Rngs, like: torch.Tensor) -> torch.Tensor:
    """A standard-normal draw per image of the shape of one image of `like`, from a CPU torch generator seeded by
    that image's stream: torch's vectorized Box-Muller is 2-3x faster than numpy's ziggurat."""
    out = torch.empty(like.shape)
    for o, r in zip(out, rngs):
        o.normal_(generator=torch.Generator().manual_seed(int(r.integers(2 ** 63))))
    return out.to(like)


def gaussian_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    return _normal(rngs, x).mul_(c).add_(x).clamp_(0, 1).mul_(255)


def shot_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    lam = (x * c).cpu().double().numpy()
    counts = np.stack([r.poisson(rate) for r, rate in zip(rngs, lam)])
    return (torch.from_numpy(counts).to(x) / c).clamp_(0, 1) * 255


def impulse_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    # salt and pepper in equal shares on a fraction c of all values (skimage's 's&p', per channel value):
    # u < c flips a value, and u < c / 2 makes it salt
    u = torch.from_numpy(np.stack([r.random(x.shape[1:], dtype=np.float32) for r in rngs])).to(x)
    return torch.where(u < c, (u < c / 2).to(x), x).mul_(255)


def speckle_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    return _normal(rngs, x).mul_(c).mul_(x).add_(x).clamp_(0, 1).mul_(255)


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
    # cv2.filter2D (the published code's) switches to a DFT for kernels of this size, and so do we: a direct
    # 17x17..21x21 convolution is 5-10x slower on CPU. Zero-padding to `size` >= h + 2r keeps the circular
    # convolution's wrap-around out of the kept window.
    k = torch.from_numpy(disk_kernel(*c)).to(x)
    h, w = x.shape[-2:]
    r = (k.shape[0] - 1) // 2
    y = F.pad(x, (r, r, r, r), mode="reflect")  # cv2.filter2D's default border is reflect-101, torch's 'reflect'
    size = (next_fast_len(h + 2 * r, real=True), next_fast_len(w + 2 * r, real=True))
    spectrum = torch.fft.rfft2(y, s=size) * torch.fft.rfft2(k.flip(0, 1), s=size)  # flipped: filter2D correlates
    return torch.fft.irfft2(spectrum, s=size)[..., 2 * r:2 * r + h, 2 * r:2 * r + w].clamp_(0, 1) * 255


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


def shifted_sum(img: torch.Tensor, taps: list[tuple[int, int, float]]) -> torch.Tensor:
    """sum of weight * img[..., h - dy, w - dx] over the (dy, dx, weight) taps, edges replicated, for one
    (..., H, W) image: a slice per tap, where a gather per tap over a batch or a dense (4R+1)^2 convolution
    with the motion line is 10-1000x slower on CPU."""
    h, w = img.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx, _ in taps)
    padded = F.pad(img.reshape(-1, h, w), (pad, pad, pad, pad), mode="replicate").reshape(*img.shape[:-2], h + 2 * pad,
                                                                                           w + 2 * pad)
    out = torch.zeros_like(img)
    for dy, dx, weight in taps:
        out.add_(padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w], alpha=weight)
    return out


def motion_blur(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    h, w = x.shape[-2:]
    taps = [motion_taps(int(c[0]), c[1], r.uniform(-45, 45), min(h, w)) for r in rngs]
    return torch.stack([shifted_sum(img, t) for img, t in zip(x, taps)]) * 255


# brightness and saturate move one HSV coordinate, and every RGB component is a function of the hue times V and
# S as v * (1 - s * f(h)): so skimage's rgb2hsv -> hsv2rgb round trip is done on RGB directly, without the hue.
def brightness(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    v = x.amax(1, keepdim=True)
    bright = (v + c).clamp_(0, 1)
    return torch.where(v > 0, x * (bright / v.clamp_min(1e-12)), bright).clamp_(0, 1).mul_(255)


def saturate(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    v = x.amax(1, keepdim=True)
    delta = v - x.amin(1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    # f(h) per component; a grey pixel has hue 0 (red), where f = (0, 1, 1)
    hue_0 = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    f = torch.where(delta > 0, (v - x) / delta.clamp_min(1e-12), hue_0)
    f.mul_((s * c[0] + c[1]).clamp_(0, 1))  # the new S times f(h)
    return (v * (1 - f)).clamp_(0, 1).mul_(255)


def contrast(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means).mul_(c).add_(means).clamp_(0, 1).mul_(255)
