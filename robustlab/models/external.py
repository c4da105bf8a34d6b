"""Architectures from torchvision, timm and the RobustBench zoo, behind the same load_model."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from robustlab.errors import RobustlabError


def build_external(arch: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """`torchvision:NAME` or `timm:NAME` without pretrained weights (weights come from the checkpoint)."""
    source, _, name = arch.partition(":")
    if source == "torchvision":
        import torchvision
        if name not in torchvision.models.list_models():
            raise RobustlabError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise RobustlabError(f"arch {arch} needs timm: pip install timm") from None
        if not timm.is_model(name):
            raise RobustlabError(f"timm has no model {name!r}; see timm.list_models()")
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    raise RobustlabError(f"unknown architecture source {source!r} in {arch!r}; use torchvision:NAME or timm:NAME")
