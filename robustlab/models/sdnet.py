"""SDNet: ResNets whose stem (or every block conv, "-all") is a CSC layer."""
from __future__ import annotations

from functools import partial

from robustlab.models.csc import CSCConv2d, csc_layers
from robustlab.models.registry import ArchSpec, register_arch
from robustlab.models.resnet import DEPTHS, ResNet


def build_sdnet(depth: int, *, num_classes: int = 10, stem: str = "cifar", width: float = 1.0, all_layers: bool = False,
                shortcut: bool = True, lmbda: float = 0.1, mu: float = 0.0, n_steps: int = 2,
                non_negative: bool = True, w_norm: bool = True, n_dict: int = 1) -> ResNet:
    csc = partial(CSCConv2d, lmbda=lmbda, mu=mu, n_steps=n_steps, non_negative=non_negative, w_norm=w_norm,
                  n_dict=n_dict)
    net = ResNet(depth, num_classes=num_classes, stem=stem, width=width, csc=csc, sparse_blocks=all_layers,
                 shortcut=shortcut)
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
