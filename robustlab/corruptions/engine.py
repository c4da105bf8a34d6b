"""The corruption engine: a registry of the 19 corruptions and seeded, batch-size-independent application."""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, overload

import numpy as np
import torch

from robustlab.corruptions import batched, per_image, uint8_batch
from robustlab.corruptions.parameters import BENCHMARK, EXTRA, PARAMETER_SETS, SET_NAMES
from robustlab.errors import RobustlabError
from robustlab.registry import Registry

# Bumped whenever a corruption's output bytes change, so that generated corruptions cached by an older engine
# are not served (robustlab.data.corrupted keys its cache on it). 2: OpenCV/FFT gaussian, defocus and motion
# blur, grid_sample zoom blur, torch-sampled gaussian/speckle noise, one uniform per value for impulse noise.
# 3: snow's blurred layer quantized to 8 bits, as the published code reads it back from ImageMagick.
ENGINE_VERSION = 3


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str
    fn: Callable[..., Any]
    kind: str  # "torch": whole batches (CPU or GPU); "uint8": whole uint8 batches on the CPU; "image": one at a time
    on_accelerator: Callable[..., Any] | None = None  # a "uint8" corruption's torch path, same bytes, off the CPU


CORRUPTIONS: Registry[Corruption] = Registry("corruption")
_FAMILIES = {
    "noise": ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"],
    "blur": ["gaussian_blur", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur"],
    "weather": ["snow", "frost", "fog", "brightness", "spatter"],
    "digital": ["contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"],
}
# the C-library uint8 path first where both exist: on the CPU it beats torch's float passes (uint8_batch.py)
_KINDS = {"uint8": uint8_batch, "torch": batched, "image": per_image}
KIND_SUMMARY = {"torch": "batched torch", "uint8": "batched uint8 (C libraries, CPU)", "image": "per image"}
for _family, _names in _FAMILIES.items():
    for _name in _names:
        _kind = next(k for k, module in _KINDS.items() if hasattr(module, _name))
        _torch = getattr(batched, _name, None) if _kind == "uint8" else None
        CORRUPTIONS.register(_name, Corruption(_name, _family, getattr(_KINDS[_kind], _name), _kind, _torch))
assert sorted(CORRUPTIONS) == sorted(BENCHMARK + EXTRA)


# The published files of a parameter set were saved as JPEG at this quality (make_imagenet_c.py: quality=85,
# optimize=True, which changes only the entropy coding); CIFAR-10-C was saved as raw uint8 arrays.
PUBLISHED_JPEG_QUALITY = {"imagenet": 85, "cifar": None}


def reencode_quality(parameters: str, reencode: bool | None) -> int | None:
    """The JPEG quality generated images are re-encoded at (None: not re-encoded)."""
    if reencode is False:
        return None
    return PUBLISHED_JPEG_QUALITY[parameters] or (85 if reencode else None)


def parameter(name: str, severity: int, parameters: str) -> Any:
    """The published parameter of a corruption at a severity in a parameter set ('cifar' or 'imagenet')."""
    if parameters not in PARAMETER_SETS:
        raise RobustlabError(f"unknown parameter set {parameters!r}; use {SET_NAMES}")
    CORRUPTIONS.get(name)
    if severity not in (1, 2, 3, 4, 5):
        raise RobustlabError(f"severity must be 1..5, got {severity}")
    return PARAMETER_SETS[parameters][name][severity - 1]


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The random stream of one image: depends on (seed, corruption, severity, image index) only."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), severity, index])


class ImageStreams(Sequence[np.random.Generator]):
    """The random streams of images start, start + 1, ..., built on first use: deterministic corruptions never
    pay for them (building a Generator costs ~10 us, more than contrast takes on a 32x32 image)."""

    def __init__(self, seed: int, name: str, severity: int, start: int, n: int) -> None:
        self.seed, self.name, self.severity, self.start, self.n = seed, name, severity, start, n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> np.random.Generator: ...

    @overload
    def __getitem__(self, i: slice) -> list[np.random.Generator]: ...

    def __getitem__(self, i: int | slice) -> np.random.Generator | list[np.random.Generator]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return image_rng(self.seed, self.name, self.severity, self.start + i)


def corrupt(images: np.ndarray, name: str, severity: int, *, parameters: str = "cifar", seed: int = 0,
            start: int = 0, device: str | torch.device = "cpu", param: Any = None,
            reencode: bool | None = None) -> np.ndarray:
    """Corrupt uint8 images (N, H, W, 3) or grayscale (N, H, W[, 1]); image i uses index start + i for its seed.

    `param` overrides the parameter set's value (suite files may define their own levels). `reencode` (default: the
    parameter set's published practice) re-encodes the result as JPEG, as ImageNet-C's files were saved (quality 85).
    """
    spec = CORRUPTIONS.get(name)
    p = parameter(name, severity, parameters) if param is None else param
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise RobustlabError(f"corrupt() takes uint8 images, got {images.dtype}; convert with (x * 255).astype(uint8)")
    gray = images.ndim == 3 or images.shape[-1] == 1
    rgb = np.repeat(images.reshape(*images.shape[:3], 1), 3, axis=-1) if gray else images
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or min(rgb.shape[1:3]) < 28:
        raise RobustlabError(f"images must be (N, H, W, 3) or grayscale with H, W >= 28, got {images.shape}")
    rngs = ImageStreams(seed, name, severity, start, len(rgb))
    if spec.on_accelerator is not None and torch.device(device).type != "cpu":
        out = run(spec.on_accelerator, "torch", rgb, p, rngs, device)
    else:
        out = run(spec.fn, spec.kind, rgb, p, rngs, device)
    quality = reencode_quality(parameters, reencode)
    if quality is not None:
        out = uint8_batch.jpeg_compression(out, quality, rngs)
    if gray:  # back to one channel with ITU-R 601 luma, like PIL's convert("L")
        out = np.clip(np.floor(out @ np.array([0.299, 0.587, 0.114]) + 0.5), 0, 255).astype(np.uint8)
        out = out.reshape(images.shape)
    return out


def run(fn: Callable[..., Any], kind: str, rgb: np.ndarray, p: Any, rngs: Sequence[np.random.Generator],
        device: str | torch.device) -> np.ndarray:
    """One corruption function of a kind (Corruption.kind) on uint8 (N, H, W, 3) images; uint8 out. Float results
    are clipped and truncated to uint8, as the published generators do."""
    if kind == "torch":
        x = torch.from_numpy(rgb).to(device).permute(0, 3, 1, 2).float().div_(255)
        return fn(x, p, rngs).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    if kind == "uint8":
        return fn(np.ascontiguousarray(rgb), p, rngs)  # OpenCV refuses strided views
    return np.clip(np.stack([fn(img / 255.0, p, r) for img, r in zip(rgb, rngs)]), 0, 255).astype(np.uint8)
