"""One registry of architectures, the config that travels with the weights, and the pixel-space wrapper."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from robustlab.errors import RobustlabError
from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.official_config import CscSettings

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    """A named architecture: factory(**arch_kwargs) builds the bare network (normalized input -> logits)."""
    name: str
    factory: Callable[..., nn.Module]
    family: str
    summary: str


ARCHS: Registry[ArchSpec] = Registry("architecture")


def register_arch(spec: ArchSpec) -> ArchSpec:
    return ARCHS.register(spec.name, spec)


@dataclass
class ModelConfig:
    """Everything needed to rebuild and feed a network: stored in every robustlab checkpoint."""
    arch: str
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise RobustlabError(f"checkpoint config has unknown fields {sorted(unknown)}; upgrade robustlab")
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


class RobustModel(nn.Module):
    """Takes NCHW pixels in [0, 1], normalizes inside and returns one logits tensor."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, config: ModelConfig, name: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.name = name or config.arch
        self.checkpoint_path: Path | None = None  # the file it was loaded from, for hashing
        self.csc_settings: CscSettings | None = None  # where an SDNet's hidden CSC settings came from
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(x))
        return out[0] if isinstance(out, tuple) else out  # some zoo networks return (logits, extra)
