"""Building the bare network of a config: a registered architecture, or torchvision's / timm's."""
from __future__ import annotations

import torch.nn as nn

from robustlab.errors import RobustlabError
from robustlab.models.external import build_external
from robustlab.models.registry import ARCHS, ModelConfig


def build_net(config: ModelConfig) -> nn.Module:
    """The bare network for a config: a registered arch, or `torchvision:NAME` / `timm:NAME`."""
    if ":" in config.arch:
        return build_external(config.arch, num_classes=config.num_classes, **config.arch_kwargs)
    spec = ARCHS.get(config.arch)
    try:
        return spec.factory(num_classes=config.num_classes, **config.arch_kwargs)
    except TypeError as e:
        raise RobustlabError(f"arch {config.arch}: bad arguments {config.arch_kwargs} ({e})") from None
