"""Runs attacks under the harness's rules: seeded, float32, eval mode, frozen BatchNorm statistics, and the
harness (never the attack) enforces eps and [0, 1] and decides which images stay correctly classified."""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from robustlab.attacks.adapters import ATTACKS
from robustlab.attacks.draws import ImageDraws
from robustlab.attacks.spec import AttackSpec
from robustlab.errors import RobustlabError

REL_TOL = 1e-6  # accepted relative excess over eps
GROSS = 1e-3  # relative excess (or distance outside [0, 1]) beyond which an attack's output is a bug, not rounding
_ULP = 2 * torch.finfo(torch.float32).eps  # float32 rounding of x + delta and of (x + delta) - x on [0, 1]


@dataclass(frozen=True)
class BatchOutcome:
    """Per-image results of one attack on one batch (bool tensors on the model's device)."""
    clean_correct: torch.Tensor
    adv_correct: torch.Tensor
    robust: torch.Tensor  # clean_correct & adv_correct
    adversarial: torch.Tensor
    perturbation: torch.Tensor  # per-image size of adversarial - x in the spec's norm (float64)
    projected: torch.Tensor  # the attack returned a point slightly outside the ball or [0, 1]: projected back
    adv_pred: torch.Tensor  # the class predicted for the adversarial image (-1: non-finite logits)

    @classmethod
    def of(cls, clean_correct: torch.Tensor, adv_pred: torch.Tensor, y: torch.Tensor, adversarial: torch.Tensor,
           perturbation: torch.Tensor, projected: torch.Tensor) -> BatchOutcome:
        adv_correct = adv_pred == y
        return cls(clean_correct, adv_correct, clean_correct & adv_correct, adversarial, perturbation, projected,
                   adv_pred)

    @property
    def max_perturbation(self) -> float:
        return float(self.perturbation.max())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())


class _Differentiable(nn.Module):
    """Gives a model whose output is cut from its input (computed under no_grad) a zero input gradient, so that
    white-box attacks run instead of crashing; the zero-gradient diagnostic reports such models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if torch.is_grad_enabled() and x.requires_grad and not out.requires_grad:
            out = out + 0 * x.flatten(1)[:, :1]
        return out


def _name(model: nn.Module) -> str:
    return getattr(model, "name", None) or type(model).__name__


def _device(model: nn.Module, fallback: torch.device) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return fallback if tensor is None else tensor.device


def check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as float32 pixels and long labels on the model's device, or a clear error for bad input."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise RobustlabError(f"images must be a float NCHW tensor of pixels in [0, 1], got {got}; "
                             "convert uint8 images with x.float() / 255")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape[:1] or y.is_floating_point():
        got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise RobustlabError(f"labels must be an integer tensor of shape ({len(x)},), got {got}")
    if not len(x):
        raise RobustlabError("the batch holds no images; pass at least one")
    if not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise RobustlabError(f"images must be pixels in [0, 1], got values in [{float(x.min()):.4g}, "
                             f"{float(x.max()):.4g}]; normalization happens inside robustlab models")
    bad = [p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32]
    if bad:
        raise RobustlabError(f"model {_name(model)} has {bad[0]} parameters; attacks run in float32, "
                             "call model.float() first")
    device = _device(model, x.device)
    return x.detach().to(device, torch.float32), y.detach().to(device, torch.long)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN counting as equal to NaN (an unchanged NaN is unchanged)."""
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}" if name else key: buf.detach().clone() for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for key, buf in m.named_buffers(recurse=False) if buf is not None}


@contextmanager
def guarded(model: nn.Module, what: str) -> Iterator[None]:
    """Requires eval mode; afterwards restores and reports any change of mode or of BatchNorm statistics."""
    if any(m.training for m in model.modules()):
        raise RobustlabError(f"model {_name(model)} is in training mode; call model.eval() before attacking it")
    before = _bn_stats(model)
    # attacks need input gradients only: frozen weights leave the parameters' .grad untouched and skip the
    # weight gradients of attacks that call backward() (FAB)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    problems: list[str] = []
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if any(m.training for m in model.modules()):
            problems.append("left the model in training mode")
            model.eval()
        after = _bn_stats(model)
        changed = [key for key, value in before.items() if not same(value, after[key])]
        if changed:
            problems.append(f"changed BatchNorm running statistics ({', '.join(changed[:3])}"
                            f"{', ...' if len(changed) > 3 else ''})")
            for key in changed:
                model.get_buffer(key).copy_(before[key])
    if problems:
        raise RobustlabError(f"{what} {' and '.join(problems)} of model {_name(model)}; the model is restored but "
                             "the result is void: fix the attack so that it keeps the model in eval mode")


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seeds torch, numpy and random for the attack and gives the caller its own random streams back."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).double()
    return flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(dim=1)


def _enforce(adv: torch.Tensor, x: torch.Tensor, spec: AttackSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adversarial batch inside the eps-ball and [0, 1], its per-image size, and which images were projected."""
    if not isinstance(adv, torch.Tensor) or adv.shape != x.shape:
        got = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
        raise RobustlabError(f"attack {spec.name} returned {got} for a batch of shape {tuple(x.shape)}; "
                             "the attack adapter is broken")
    adv = adv.detach().to(x.device, torch.float32)
    if not torch.isfinite(adv).all():
        raise RobustlabError(f"attack {spec.name} returned NaN or inf pixels; the attack is broken")
    tol = spec.eps * REL_TOL + _ULP * (1 if spec.norm == "Linf" else x[0].numel() ** 0.5)
    size = _size(adv - x, spec.norm)
    low, high = adv.flatten(1).amin(dim=1), adv.flatten(1).amax(dim=1)
    gross = (size > spec.eps * (1 + GROSS) + tol) | (low < -GROSS) | (high > 1 + GROSS)
    if gross.any():
        i = int(gross.nonzero()[0])
        raise RobustlabError(f"attack {spec.name} returned {int(gross.sum())} image(s) far outside the {spec.norm} "
                             f"ball of eps {spec.eps:.6g} or [0, 1] (image {i}: size {float(size[i]):.6g}, pixels in "
                             f"[{float(low[i]):.4g}, {float(high[i]):.4g}]); the attack is broken")
    projected = (size > spec.eps + tol) | (low < 0) | (high > 1)
    if projected.any():
        delta = adv - x
        if spec.norm == "Linf":
            delta = delta.clamp(-spec.eps, spec.eps)
        else:
            delta = delta * (spec.eps / size.clamp_min(spec.eps)).to(delta).view(-1, 1, 1, 1)
        adv = torch.where(projected.view(-1, 1, 1, 1), (x + delta).clamp(0, 1), adv)
        size = _size(adv - x, spec.norm)
    return adv, size, projected


def predicted(logits: torch.Tensor) -> torch.Tensor:
    """The class each row of logits predicts, -1 where a logit is not finite (the argmax of a NaN row is class 0,
    which would count as a prediction)."""
    return torch.where(torch.isfinite(logits).all(dim=1), logits.argmax(dim=1), -1)


def _predicted(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The class the model predicts for each image (-1: non-finite logits, wrong clean or attacked), and its number
    of classes."""
    with torch.no_grad():
        logits = model(x)
    if logits.dim() != 2 or len(logits) != len(x):
        raise RobustlabError(f"model {_name(model)} returned shape {tuple(logits.shape)} for {len(x)} images; "
                             "it must return one row of logits per image")
    if not (0 <= int(y.min()) and int(y.max()) < logits.shape[1]):
        raise RobustlabError(f"labels span {int(y.min())}..{int(y.max())} but model {_name(model)} has "
                             f"{logits.shape[1]} classes; evaluate it on the dataset it was trained for")
    return predicted(logits), logits.shape[1]


def attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
                 offsets: Sequence[int] | None = None) -> BatchOutcome:
    """Attack one batch (pixels in [0, 1]) and judge each image on the projected adversarial example.

    `seed` seeds the batch; image i draws its random start from its own stream, seeded by seed + offsets[i]
    (default: its row), so an attack whose entry is `image_independent` gives each image the same adversarial
    example in any batch that keeps its offset."""
    entry = ATTACKS.get(spec.name)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise RobustlabError(f"seed must be a whole number in [0, 2**32), got {seed!r}")
    x, y = check_batch(model, x, y)
    offsets = range(len(x)) if offsets is None else offsets
    if len(offsets) != len(x):
        raise RobustlabError(f"{len(offsets)} offsets for a batch of {len(x)} images; pass one per image")
    draws = ImageDraws.seeded([seed + int(o) for o in offsets]) if entry.image_independent(spec) else None
    with guarded(model, f"attack {spec.name}"):
        clean_pred, num_classes = _predicted(model, x, y)
        # inference tensors from a caller's inference_mode cannot enter autograd: run on fresh copies
        with _seeded(seed, x.device), torch.inference_mode(False), torch.enable_grad(), draws or nullcontext():
            adv = entry.run(_Differentiable(model).eval(), x.clone(), y.clone(), spec, seed=seed,
                            num_classes=num_classes, draws=draws)
        adv, size, projected = _enforce(adv, x, spec)
        adv_pred, _ = _predicted(model, adv, y)
    return BatchOutcome.of(clean_pred == y, adv_pred, y, adv, size, projected)


def transfer_batch(source: nn.Module, targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                   spec: AttackSpec, *, seed: int, offsets: Sequence[int] | None = None) -> dict[str, BatchOutcome]:
    """Craft adversarial examples on `source` and judge them on every target model (seeds as in attack_batch)."""
    if not targets:
        raise RobustlabError("transfer needs at least one target model; pass {name: model}")
    crafted = attack_batch(source, x, y, spec, seed=seed, offsets=offsets)
    outcomes = {}
    for name, target in targets.items():
        x_t, y_t = check_batch(target, x, y)
        adv = crafted.adversarial.to(x_t.device)
        with guarded(target, f"transfer evaluation on {name}"):
            (clean_pred, _), (adv_pred, _) = _predicted(target, x_t, y_t), _predicted(target, adv, y_t)
        outcomes[name] = BatchOutcome.of(clean_pred == y_t, adv_pred, y_t, adv, crafted.perturbation.to(x_t.device),
                                         crafted.projected.to(x_t.device))
    return outcomes
