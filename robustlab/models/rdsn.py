"""The random depthwise signed network (Xue & Roshan): random sign-activated blocks, global average pooling per
block, and a trained linear head. The random tensors are rebuilt from the seed and never stored."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlab.errors import RobustlabError
from robustlab.models.registry import ArchSpec, register_arch

POOLS = ("none", "avg", "max")
DEFAULT_CHUNK = 256  # feature channels computed together: bounds activation memory to batch x 256 x H x W


def _unit_filters(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    return (w / w.flatten(1).norm(dim=1).view(-1, *([1] * (len(shape) - 1)))).float()


class RDSN(nn.Module):
    """k random filters over all input channels, then depth-1 depthwise random layers, each followed by a sign
    activation with a random offset (a random hyperplane over patches); optional 2x2 pooling between layers;
    global average pooling gives k features, standardized and fed to a linear head.

    Filters have unit norm and offsets are N(0, 1): on standardized pixels and on +-1 signs, the projection of a
    patch on a unit filter has a spread of about 1, so the hyperplanes cut through the data rather than past it.
    sign() has a zero gradient almost everywhere: gradient attacks find nothing, by construction.
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, *, num_classes: int, k: int = 2048, depth: int = 3, kernel_size: int = 3, seed: int = 0,
                 pool: str = "none", in_channels: int = 3) -> None:
        super().__init__()
        if k < 1 or depth < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise RobustlabError(f"rdsn needs k >= 1, depth >= 1 and an odd kernel_size, got k={k}, depth={depth}, "
                                 f"kernel_size={kernel_size}")
        if pool not in POOLS:
            raise RobustlabError(f"rdsn pool {pool!r} is not one of {', '.join(POOLS)}")
        self.k, self.depth, self.kernel_size, self.pool = k, depth, kernel_size, pool
        self.chunk = DEFAULT_CHUNK  # a memory knob only: features do not depend on it
        gen = torch.Generator().manual_seed(seed)
        shapes = [(k, in_channels, kernel_size, kernel_size)] + [(k, 1, kernel_size, kernel_size)] * (depth - 1)
        # non-persistent: the checkpoint stores the seed (in the config), not the random tensors
        for i, shape in enumerate(shapes):
            self.register_buffer(f"weight{i}", _unit_filters(gen, shape), persistent=False)
            self.register_buffer(f"offset{i}", torch.randn(k, generator=gen), persistent=False)
        self.register_buffer("feature_mean", torch.zeros(k))
        self.register_buffer("feature_std", torch.ones(k))
        self.head = nn.Linear(k, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The k block features (before standardization) of normalized images, computed `chunk` blocks at a time."""
        parts = []
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's depthwise convolutions are faster channels-last
        for lo in range(0, self.k, self.chunk):
            hi = min(lo + self.chunk, self.k)
            h = x
            for i in range(self.depth):
                if i > 0 and self.pool != "none":
                    h = (F.avg_pool2d if self.pool == "avg" else F.max_pool2d)(h, 2, ceil_mode=True)
                weight, offset = getattr(self, f"weight{i}")[lo:hi], getattr(self, f"offset{i}")[lo:hi]
                groups = 1 if i == 0 else hi - lo
                h = torch.sign(F.conv2d(h, weight, offset, padding=self.kernel_size // 2, groups=groups))
            parts.append(h.mean(dim=(2, 3)))
        return torch.cat(parts, dim=1)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.standardize(self.features(x)))


register_arch(ArchSpec("rdsn", RDSN, family="rdsn",
                       summary="random depthwise signed network: random sign blocks, GAP features, linear head"))
