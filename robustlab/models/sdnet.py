"""SDNet: ResNets whose stem (or every block conv, "-all") is a CSC layer."""
from __future__ import annotations

from functools import partial
from typing import Any

from robustlab.models.csc import CSCConv2d, csc_layers
from robustlab.models.registry import ArchSpec, register_arch
from robustlab.models.resnet import DEPTHS, ResNet

# The CSC hyper-parameters that a checkpoint's keys cannot show, at the official code's defaults (design.md);
# robustlab's own checkpoints record them, official ones take them from their experiment configuration.
CSC_DEFAULTS: dict[str, Any] = {"lmbda": 0.1, "mu": 0.0, "n_steps": 2, "non_negative": True, "w_norm": True}


def build_sdnet(depth: int, *, num_classes: int = 10, stem: str = "cifar", width: float = 1.0, all_layers: bool = False,
                shortcut: bool = True, n_dict: int = 1, stem_width: int | None = None, **hidden: Any) -> ResNet:
    unknown = set(hidden) - set(CSC_DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected arguments {sorted(unknown)}")
    csc = partial(CSCConv2d, n_dict=n_dict, **{**CSC_DEFAULTS, **hidden})
    net = ResNet(depth, num_classes=num_classes, stem=stem, width=width, csc=csc, sparse_blocks=all_layers,
                 shortcut=shortcut, stem_width=stem_width)
    csc_layers(net)[0].record_residual = True  # Algorithm 1 reads the first layer's residual
    return net


for _depth in DEPTHS:
    register_arch(ArchSpec(f"sdnet{_depth}", partial(build_sdnet, _depth), family="sdnet",
                           summary=f"SDNet-{_depth}: CSC stem, ResNet blocks"))
    register_arch(ArchSpec(f"sdnet{_depth}-all", partial(build_sdnet, _depth, all_layers=True), family="sdnet",
                           summary=f"SDNet-{_depth}-all: every conv a CSC layer"))
    register_arch(ArchSpec(f"sdnet{_depth}-all-noshortcut",
                           partial(build_sdnet, _depth, all_layers=True, shortcut=False), family="sdnet",
                           summary=f"SDNet-{_depth}-all without shortcuts"))
