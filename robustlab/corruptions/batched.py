"""Corruptions computed on whole batches with torch (CPU or GPU).

Each function takes x: (N, 3, H, W) floats in [0, 1], the severity's parameter and one numpy Generator per
image (all randomness is drawn per image on the CPU, so results do not depend on batch size or device),
and returns floats on the 0..255 scale, unclipped; the engine clips and truncates to uint8 as the
published generators do. Written from the formulas of Hendrycks & Dietterich's benchmark code.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len

from robustlab.corruptions.uint8_batch import box_enlarge_index, gaussian_kernel

Rngs = Sequence[np.random.Generator]


def _normal(rngs: Rngs, like: torch.Tensor) -> torch.Tensor:
    """A standard-normal draw per image of the shape of one image of `like`, from a CPU torch generator seeded by
    that image's stream: torch's vectorized Box-Muller is 2-3x faster than numpy's ziggurat."""
    out = torch.empty(like.shape)
    for o, r in zip(out, rngs):
        # 64 raw bits for the seed: Generator.integers costs 10x more (its errstate wrapper)
        o.normal_(generator=torch.Generator().manual_seed(r.bit_generator.random_raw()))
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
    drawn = np.empty(x.shape, dtype=np.float32)
    for image_u, r in zip(drawn, rngs):
        r.random(dtype=np.float32, out=image_u)
    u = torch.from_numpy(drawn).to(x.device)
    return x.masked_fill(u < c, 0).masked_fill_(u < c / 2, 1).mul_(255)


def speckle_noise(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    return _normal(rngs, x).mul_(c).mul_(x).add_(x).clamp_(0, 1).mul_(255)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The anti-aliased disk of the defocus blur (a 2-D Gaussian-smoothed binary disk, summing to 1)."""
    half = 8 if radius <= 8 else int(math.ceil(radius))
    ksize = (3, 3) if radius <= 8 else (5, 5)
    coords = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(coords, coords)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def filter_cv2(x: torch.Tensor, kernels: np.ndarray, border: int) -> torch.Tensor:
    """filter2d on the CPU, image by image: OpenCV's filter2D (the published code's; it switches to a DFT for
    large kernels with its own tiling, 2-3x faster than torch.fft here), or sepFilter2D for a separable kernel
    (4-6x faster than filter2D on the outer product)."""
    hwc = x.permute(0, 2, 3, 1).contiguous().numpy()
    if kernels.ndim == 1:
        out = [cv2.sepFilter2D(im, -1, kernels, kernels, borderType=border) for im in hwc]
    else:
        out = [cv2.filter2D(im, -1, kernels[i % len(kernels)], borderType=border) for i, im in enumerate(hwc)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def filter_fft(x: torch.Tensor, kernels: np.ndarray, border: int) -> torch.Tensor:
    """filter2d as one batched torch FFT (for accelerators). Zero-padding to `size` >= h + 2r keeps the
    circular convolution's wrap-around out of the kept window."""
    k = torch.from_numpy(np.outer(kernels, kernels)[None] if kernels.ndim == 1 else kernels).to(x)
    h, w = x.shape[-2:]
    r = (k.shape[-1] - 1) // 2
    y = F.pad(x, (r, r, r, r), mode={cv2.BORDER_REFLECT_101: "reflect", cv2.BORDER_REPLICATE: "replicate"}[border])
    size = (next_fast_len(h + 2 * r, real=True), next_fast_len(w + 2 * r, real=True))
    spectrum = torch.fft.rfft2(y, s=size) * torch.fft.rfft2(k.flip(-2, -1), s=size)[:, None]  # flipped: correlation
    return torch.fft.irfft2(spectrum, s=size)[..., 2 * r:2 * r + h, 2 * r:2 * r + w]


def filter2d(x: torch.Tensor, kernels: np.ndarray, border: int) -> torch.Tensor:
    """cv2.filter2D of each image of x (N, C, H, W) with kernels[i] (kernels: (1 or N, 2r + 1, 2r + 1), or one
    1-D kernel k for the separable k k^T), i.e. out[n, c, i, j] = sum_ab k[a, b] x[n, c, i + a - r, j + b - r], the
    border extended by `border` (a cv2.BORDER_* flag): direct torch convolutions with these 9x9..61x61 kernels
    are 5-1000x slower."""
    return (filter_cv2 if x.device.type == "cpu" else filter_fft)(x, kernels, border)


def defocus_blur(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    return filter2d(x, disk_kernel(*c)[None], cv2.BORDER_REFLECT_101).clamp_(0, 1).mul_(255)


def gaussian_blur(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    # skimage.filters.gaussian: scipy's separable filter with mode 'nearest' (edge replication), truncate 4
    return filter2d(x, gaussian_kernel(c), cv2.BORDER_REPLICATE).clamp_(0, 1).mul_(255)


def motion_kernel(radius: int, sigma: float, angle: float, max_shift: int) -> np.ndarray:
    """The motion blur as a filter2D kernel of side 2r + 1, r = min(2 * radius, max_shift - 1): Gaussian weights
    along a line at `angle` degrees, out[h, w] = sum weight * x[h - dy, w - dx] (edges replicated); the line
    stops where the motion leaves the image (|shift| >= max_shift)."""
    width = 2 * radius + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    py, px = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(py, px)
    r = min(width - 1, max_shift - 1)
    kernel = np.zeros((2 * r + 1, 2 * r + 1))
    for i, weight in enumerate(weights):
        dy, dx = -math.ceil(i * py / hyp - 0.5), -math.ceil(i * px / hyp - 0.5)
        if abs(dy) >= max_shift or abs(dx) >= max_shift:
            break
        kernel[r - dy, r - dx] += weight
    return kernel


def motion_blur(x: torch.Tensor, c: tuple[float, float], rngs: Rngs) -> torch.Tensor:
    h, w = x.shape[-2:]
    kernels = np.stack([motion_kernel(int(c[0]), c[1], r.uniform(-45, 45), min(h, w)) for r in rngs])
    return filter2d(x, kernels, cv2.BORDER_REPLICATE).mul_(255)


def zoom_coordinates(size: int, factor: float) -> np.ndarray:
    """Along one axis, the source coordinate of each output pixel of the published clipped_zoom: a centred crop
    of ceil(size / factor) pixels, zoomed by scipy.ndimage.zoom (which maps zoomed index o to o * (crop - 1) /
    (zoomed - 1)), cropped back to `size`."""
    crop = math.ceil(size / factor)
    zoomed = round(crop * factor)
    top, trim = (size - crop) // 2, (zoomed - size) // 2
    return top + (trim + np.arange(size)) * ((crop - 1) / (zoomed - 1))


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The published clipped_zoom (scipy.ndimage.zoom, order 1) of (N, C, H, W): scipy's order-1 zoom is bilinear
    sampling at zoom_coordinates, here one grid_sample on the whole batch, 10-25x faster than scipy's spline code
    image by image."""
    n, _, h, w = x.shape
    gy, gx = (torch.from_numpy(zoom_coordinates(size, factor) * 2 / (size - 1) - 1).to(x) for size in (h, w))
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).expand(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def zoom_blur(x: torch.Tensor, c: tuple[float, float, float], rngs: Rngs) -> torch.Tensor:
    factors = np.arange(*c)
    out = x.clone()
    for z in factors:
        out += clipped_zoom(x, z)
    return out.div_(len(factors) + 1).mul_(255)


def _bytes(x: torch.Tensor) -> torch.Tensor:
    """The uint8 values of x (bytes / 255) as float64: exact integers for the byte-exact paths below."""
    return x.double().mul_(255).round_()


def contrast(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    # uint8_batch.contrast's numbers: float64, the mean from the exact byte sum
    v = _bytes(x)
    means = v.sum(dim=(2, 3), keepdim=True) / (255.0 * x.shape[-2] * x.shape[-1])
    return ((v / 255 - means) * c + means).clamp_(0, 1).mul_(255)


def box_weights(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's BOX resampling of a line as an (out_size, in_size) matrix of its 22-bit fixed-point coefficients
    (precompute_coeffs, normalize_coeffs_8bpc in libImaging/Resample.c, written from their arithmetic)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, ss = 0.5 * filterscale, 1.0 / filterscale
    weights = np.zeros((out_size, in_size))
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        t = (np.arange(lo, hi) - center + 0.5) * ss
        k = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        weights[o, lo:hi] = np.trunc(0.5 + (k / k.sum() if k.sum() else k) * (1 << 22))
    return torch.from_numpy(weights)


def _box_pass(v: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    # one 8-bit pass: (2^21 + sum of byte * coefficient) >> 22, clipped; float64 holds these sums exactly
    w = weights.to(v.device)
    s = v @ w.t() if dim == -1 else w @ v
    return s.add_(1 << 21).div_(1 << 22).floor_().clamp_(0, 255)


def pixelate(x: torch.Tensor, c: float, rngs: Rngs) -> torch.Tensor:
    # uint8_batch.pixelate byte for byte (Pillow's BOX down, width then height, then the BOX enlargement's
    # one-pixel gather) as matrix products, for accelerators
    h, w = x.shape[-2:]
    sh, sw = int(h * c), int(w * c)
    small = _box_pass(_box_pass(_bytes(x), box_weights(w, sw), -1), box_weights(h, sh), -2)
    rows = torch.from_numpy(box_enlarge_index(sh, h)).to(x.device)
    cols = torch.from_numpy(box_enlarge_index(sw, w)).to(x.device)
    return small.index_select(-2, rows).index_select(-1, cols)


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
