"""The CIFAR/ImageNet ResNet family shared by ResNet and SDNet (official SDNet layout and key names)."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlab.errors import RobustlabError
from robustlab.models.registry import ArchSpec, register_arch

ConvFactory = Callable[..., nn.Module]  # (in, out, kernel, stride, padding) -> module

DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def plain_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn + shortcut, relu; a sparse (all-CSC) block has no relu inside, and without a shortcut
    none at all: the official `-all` block applies its relu inside `if SHORTCUT` (design.md)."""

    def __init__(self, in_planes: int, planes: int, stride: int, conv: ConvFactory, *, sparse: bool,
                 shortcut: bool) -> None:
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.sparse = sparse
        self.has_shortcut = shortcut
        self.shortcut = nn.Sequential()
        if shortcut and (stride != 1 or in_planes != planes):
            self.shortcut = nn.Sequential(plain_conv(in_planes, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        if not self.sparse:
            out = F.relu(out)
        out = self.bn2(self.conv2(out))
        if not self.has_shortcut:
            return out
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """layer0 (stem), four BasicBlock stages, global average pooling, `linear`."""

    def __init__(self, depth: int, *, num_classes: int, stem: str, width: float, csc: ConvFactory | None = None,
                 sparse_blocks: bool = False, shortcut: bool = True, stem_width: int | None = None) -> None:
        super().__init__()
        widths = [max(1, round(w * width)) for w in (64, 128, 256, 512)]
        c0 = stem_width or widths[0]  # the stem may be wider than the body (SDNet-18's 64 atoms on a narrow body)
        csc_stem = csc is not None
        stem_conv = csc or plain_conv
        block_conv = csc if (csc and sparse_blocks) else plain_conv
        if stem == "cifar":
            layers = [stem_conv(3, c0, 3, 1, 1), nn.BatchNorm2d(c0)]
            if not csc_stem:
                layers.append(nn.ReLU(inplace=True))
        elif stem == "imagenet":
            layers = [stem_conv(3, c0, 7, 2, 3), nn.BatchNorm2d(c0)]
            if not csc_stem:
                layers += [nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
            elif sparse_blocks:  # the official "-all" stem replaces the max-pool by a strided CSC layer
                layers.append(stem_conv(c0, c0, 3, 2, 1))
            else:
                layers.append(nn.MaxPool2d(3, 2, 1))
        else:
            raise RobustlabError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.layer0 = nn.Sequential(*layers)
        in_planes = c0
        stages = []
        for i, (planes, blocks) in enumerate(zip(widths, DEPTHS[depth])):
            stage = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stage.append(BasicBlock(in_planes, planes, stride, block_conv, sparse=sparse_blocks,
                                        shortcut=shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer0(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def build_resnet(depth: int, *, num_classes: int = 10, stem: str = "cifar", width: float = 1.0,
                 stem_width: int | None = None) -> ResNet:
    return ResNet(depth, num_classes=num_classes, stem=stem, width=width, stem_width=stem_width)


for _depth in DEPTHS:
    register_arch(ArchSpec(f"resnet{_depth}", partial(build_resnet, _depth), family="resnet",
                           summary=f"ResNet-{_depth} (official SDNet baseline layout)"))
