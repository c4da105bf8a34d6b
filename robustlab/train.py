"""Minimal reproducible training (SGD, cosine schedule), used to build the shipped digits checkpoints."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from robustlab.counting import checked_batches, count_correct, numbered
from robustlab.data import ImageSet, load_dataset, to_pixels
from robustlab.models import ARCHS, ModelConfig, RobustModel, build_net
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from robustlab.progress import ProgressFactory


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    dataset: str
    width: float = 1.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lmbda: float = 0.1
    seed: int = 0
    stem_width: int | None = None  # stem channels (SDNet: atoms); default the body's first width


def normalization(data: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The published mean/std for CIFAR and ImageNet; per-channel statistics of the training split otherwise."""
    if data.name.startswith("cifar"):
        return CIFAR_MEAN, CIFAR_STD
    if data.name == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    pixels = data.images.reshape(-1, data.images.shape[-1]).astype(np.float64) / 255  # type: ignore[attr-defined]
    return tuple(pixels.mean(0).round(4).tolist()), tuple(pixels.std(0).round(4).tolist())


def augment(x: torch.Tensor, gen: torch.Generator, *, hflip: bool) -> torch.Tensor:
    """Random crop with size/8 zero padding (and horizontal flips where they keep the label)."""
    n, _, h, w = x.shape
    pad = h // 8
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def train(cfg: TrainConfig, *, data_dir: str | None, device: torch.device, progress: ProgressFactory,
          log=print) -> tuple[RobustModel, float]:
    """Train from scratch; returns the model (eval mode) and its accuracy on the evaluation split."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_set = load_dataset(cfg.dataset, data_dir, "train")
    test_set = load_dataset(cfg.dataset, data_dir)
    mean, std = normalization(train_set)
    size = train_set.image_size[0]
    kwargs: dict = {"width": cfg.width, "stem": "cifar" if size <= 64 else "imagenet"}
    if cfg.stem_width is not None:
        kwargs["stem_width"] = cfg.stem_width
    if ARCHS.get(cfg.arch).family == "sdnet":
        kwargs["lmbda"] = cfg.lmbda
    config = ModelConfig(arch=cfg.arch, num_classes=train_set.num_classes, input_size=size, mean=mean, std=std,
                         dataset=cfg.dataset, arch_kwargs=kwargs)
    model = RobustModel(build_net(config), config, name=f"{cfg.arch}-{cfg.dataset}").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    steps = cfg.epochs * math.ceil(len(train_set) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    hflip = getattr(train_set, "hflip", False)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen).numpy()
        total_loss, seen = 0.0, 0
        for images, labels in progress(train_set.batches(cfg.batch_size, order=order),
                                       total=math.ceil(len(train_set) / cfg.batch_size), desc=f"epoch {epoch + 1}"):
            x = augment(to_pixels(images, torch.device("cpu")), gen, hflip=hflip).to(device)
            loss = F.cross_entropy(model(x), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {total_loss / seen:.4f}")
    model.eval()
    counts = count_correct(model, numbered(checked_batches(test_set, 256, None)), device, top5=False)
    return model, counts.correct / counts.n


def training_record(cfg: TrainConfig, accuracy: float, test_split: str) -> dict:
    """What a checkpoint records about how it was made."""
    return {"training": {**asdict(cfg), "test_accuracy": accuracy, "test_split": test_split}}
