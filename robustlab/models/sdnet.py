"""SDNet: ResNets whose stem (or every block conv, "-all") is a CSC layer."""
from __future__ import annotations

import dataclasses
import os
import re
from functools import partial
from typing import Any

import torch

from robustlab.errors import RobustlabError
from robustlab.models.csc import CSCConv2d, csc_layers
from robustlab.models.registry import (
    ARCHS,
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArchSpec,
    ModelConfig,
    register_arch,
)
from robustlab.models.resnet import DEPTHS, ResNet
from robustlab.official_config import CscSettings, OfficialConfig

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


# --- the official SDNet repository's checkpoints (its SDNets and ResNet baselines): keys, architecture, settings

def from_official_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official state_dict in robustlab's layout: official "-all" models nest each stage's blocks in `.layers`,
    robustlab's stages are plain Sequentials."""
    return {re.sub(r"^(layer[1-4])\.layers\.", r"\1.", key): value for key, value in sd.items()}


def infer_config(sd: dict[str, torch.Tensor]) -> ModelConfig | None:
    """Recognize an official SDNet / ResNet state_dict; None when the keys fit neither."""
    stem_key = next((k for k in ("layer0.0.dn.weight", "layer0.0.weight") if k in sd), None)
    if stem_key is None or "linear.weight" not in sd:
        return None
    sparse = stem_key.endswith(".dn.weight")
    stem_w = sd[stem_key]
    blocks = [len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    depth = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}.get((blocks[0], blocks[1], blocks[2], blocks[3]))
    if depth is None:
        return None
    imagenet = stem_w.shape[-1] == 7
    num_classes = int(sd["linear.weight"].shape[0])
    kwargs: dict[str, Any] = {"stem": "imagenet" if imagenet else "cifar", "width": stem_w.shape[0] / 64}
    if sparse:
        all_layers = "layer1.0.conv1.dn.weight" in sd
        shortcut = any(".shortcut." in k for k in sd)
        arch = f"sdnet{depth}" + ("-all" if all_layers else "") + ("" if shortcut or not all_layers else "-noshortcut")
        n_dict = stem_w.shape[1] // 3
        if n_dict != 1:
            kwargs["n_dict"] = n_dict
    else:
        arch = f"resnet{depth}"
    dataset = "imagenet" if imagenet else {10: "cifar10", 100: "cifar100"}.get(num_classes)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (CIFAR_MEAN, CIFAR_STD)
    return ModelConfig(arch=arch, num_classes=num_classes, input_size=224 if imagenet else 32, mean=mean, std=std,
                       dataset=dataset, arch_kwargs=kwargs)


def check_official_config(official: OfficialConfig, config: ModelConfig, path: str | os.PathLike) -> None:
    """Refuse an official configuration that describes another network than the checkpoint's keys."""
    said = official.arch()
    conflicts = []
    if said is not None and said != config.arch:
        conflicts.append(f"MODEL.NAME {official.name} (arch {said}) but the keys are arch {config.arch}")
    if official.num_classes is not None and official.num_classes != config.num_classes:
        conflicts.append(f"MODEL.NUM_CLASSES {official.num_classes} but the keys have {config.num_classes} classes")
    n_dict = config.arch_kwargs.get("n_dict", 1)
    if official.expansion is not None and ARCHS.get(config.arch).family == "sdnet" and official.expansion != n_dict:
        conflicts.append(f"MODEL.EXPANSION_FACTOR {official.expansion} but the keys have n_dict {n_dict}")
    if conflicts:
        raise RobustlabError(f"official config {official.path} does not fit {path}: {'; '.join(conflicts)}; give "
                             "the configuration the checkpoint was trained with")


def with_csc_settings(config: ModelConfig, official: OfficialConfig | None,
                       robustlab_format: bool) -> tuple[ModelConfig, CscSettings | None]:
    """The config with every hidden CSC setting explicit, and where they came from (None for non-SDNet archs).

    robustlab's own checkpoints were built with CSC_DEFAULTS wherever they do not record a value, and an official
    configuration that omits a key trained with the official default, so only an official checkpoint without a
    configuration has assumed values."""
    if ":" in config.arch or ARCHS.get(config.arch).family != "sdnet":
        return config, None
    given = {k: v for k, v in config.arch_kwargs.items() if k in CSC_DEFAULTS}
    if robustlab_format:
        settings = CscSettings("checkpoint")
    elif official is not None:
        given.update(official.hidden)
        settings = CscSettings(f"official config {official.path}")
    else:
        settings = CscSettings("defaults", assumed={k: v for k, v in CSC_DEFAULTS.items() if k not in given})
    kwargs = {**config.arch_kwargs, **CSC_DEFAULTS, **given}
    return dataclasses.replace(config, arch_kwargs=kwargs), settings
