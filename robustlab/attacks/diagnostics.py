"""Gradient-masking diagnostics: each check returns a Check (flag, warning); run_diagnostics runs them all."""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlab.attacks.harness import attack_batch, check_batch, guarded, same
from robustlab.attacks.spec import make_spec

LARGE_EPS = 0.5  # Linf: every pixel may move to mid-grey, so any working attack should break every image


class Check(NamedTuple):
    """A diagnostic's verdict: flag is True when the evaluation looks unreliable; warning says why ("" if not)."""
    flag: bool
    warning: str


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of the summed cross-entropy loss with respect to the pixels (zero where none flows)."""
    x, y = check_batch(model, x, y)
    with guarded(model, "the input-gradient computation"), torch.inference_mode(False), torch.enable_grad():
        x = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        if not loss.requires_grad:  # the output was computed under no_grad
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def check_zero_gradients(grad: torch.Tensor, *, max_share: float = 0.0) -> Check:
    """Flags when more than max_share of the images have an input gradient that is exactly zero."""
    share = float((grad.flatten(1).abs().sum(dim=1) == 0).float().mean())
    if share <= max_share:
        return Check(False, "")
    return Check(True, f"{share:.0%} of the images have a zero input gradient: gradient-based attacks cannot move "
                       "them and their robust accuracy is meaningless; check with black-box (square) or transfer "
                       "attacks")


def check_eps_monotonic(points: Iterable[tuple[float, float]], *, tolerance: float = 0.0) -> Check:
    """Flags when robust accuracy rises (by more than tolerance) as eps grows, over (eps, accuracy) pairs."""
    ordered = sorted(points)
    for (eps_a, acc_a), (eps_b, acc_b) in zip(ordered, ordered[1:]):
        if eps_b > eps_a and acc_b > acc_a + tolerance:
            return Check(True, f"robust accuracy rises from {acc_a:.2%} at eps {eps_a:.4g} to {acc_b:.2%} at eps "
                               f"{eps_b:.4g}: a larger budget can only help a working attack, so the attack is "
                               "failing (gradient masking or too few steps)")
    return Check(False, "")


def check_black_box(white_box_accuracy: float, black_box_accuracy: float, *, tolerance: float = 0.0) -> Check:
    """Flags when a black-box attack leaves a lower robust accuracy than a white-box one at the same eps."""
    if black_box_accuracy >= white_box_accuracy - tolerance:
        return Check(False, "")
    return Check(True, f"a black-box attack reaches {black_box_accuracy:.2%} robust accuracy, below the white-box "
                       f"{white_box_accuracy:.2%}: the gradients mislead the white-box attack (gradient masking)")


def check_large_eps(robust_accuracy: float, *, eps: float, max_accuracy: float = 0.05) -> Check:
    """Flags when an attack with a very large eps leaves more than max_accuracy robust accuracy."""
    if robust_accuracy <= max_accuracy:
        return Check(False, "")
    return Check(True, f"robust accuracy is still {robust_accuracy:.2%} at eps {eps:.4g}, where a working attack "
                       "breaks nearly every image: the attack is failing (gradient masking or too few steps)")


def gradient_sign_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: float, *,
                            seed: int) -> float:
    """The median over images of the share of pixels whose input-gradient sign is the same at x and at a random
    point within `delta` (Linf) of it; pixels without gradient at either point do not count, nor do images
    without any (NaN when no image has gradients)."""
    g0 = input_gradient(model, x, y)
    gen = torch.Generator().manual_seed(seed)
    nearby = (x.cpu() + (2 * torch.rand(x.shape, generator=gen) - 1) * delta).clamp(0, 1).to(x.device)
    g1 = input_gradient(model, nearby, y)
    both = ((g0 != 0) & (g1 != 0)).flatten(1)
    agree = ((g0.sign() == g1.sign()).flatten(1) & both).sum(1)
    counted = both.sum(1) > 0
    if not counted.any():
        return float("nan")
    return float((agree[counted].double() / both.sum(1)[counted]).median())


def check_gradient_coherence(agreements: Iterable[tuple[float, float]], *, min_agreement: float = 0.8) -> Check:
    """Flags shattered gradients: signs at points `delta` apart that agree little more than chance (0.5), over
    (delta, agreement) pairs. On the shipped ResNet and SDNet the agreement is 0.98-0.99 at 1/255-4/255; adding
    0.01 sin(500 x) to the input brings it to 0.53-0.76 while PGD's robust accuracy rises from 81% to 98%."""
    for delta, agreement in agreements:
        if agreement < min_agreement:  # NaN (no gradients) is the zero-gradient check's case
            return Check(True, f"input-gradient signs at points {delta:.3g} apart agree on only {agreement:.0%} of "
                               "the pixels (chance: 50%): the gradients are shattered and gradient attacks step "
                               "at random; check with BPDA, black-box (square) or transfer attacks")
    return Check(False, "")


def check_deterministic(first: torch.Tensor, second: torch.Tensor) -> Check:
    """Flags when two forward passes on the same images give different logits (a randomized model)."""
    if same(first, second):  # NaN logits that stay NaN are not randomness
        return Check(False, "")
    return Check(True, "the model gives different outputs on the same images: it is randomized, attack it with "
                       "expectation over transformation")


def run_diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int, eps: float = 8 / 255,
                    steps: int = 10, queries: int = 300) -> tuple[dict[str, bool], list[str]]:
    """All checks on one batch with Linf PGD (eps/4, eps/2, eps, 0.5), Square and the input gradients at points
    eps/8 and eps/4 apart (PGD's step size scale): named flags and the warnings."""
    x_checked, _ = check_batch(model, x, y)
    with guarded(model, "the determinism check"), torch.no_grad():
        first, second = model(x_checked), model(x_checked)
    sweep = {}
    for e in (eps / 4, eps / 2, eps, LARGE_EPS):
        sweep[e] = attack_batch(model, x, y, make_spec("pgd-linf", eps=e, steps=steps), seed=seed).robust_accuracy
    black_box = attack_batch(model, x, y, make_spec("square", eps=eps, queries=queries), seed=seed).robust_accuracy
    coherence = [(d, gradient_sign_agreement(model, x, y, d, seed=seed)) for d in (eps / 8, eps / 4)]
    checks = {
        "zero_gradients": check_zero_gradients(input_gradient(model, x, y)),
        "eps_not_monotonic": check_eps_monotonic(sweep.items()),
        "black_box_stronger": check_black_box(sweep[eps], black_box),
        "shattered_gradients": check_gradient_coherence(coherence),
        "large_eps_survives": check_large_eps(sweep[LARGE_EPS], eps=LARGE_EPS),
        "randomized": check_deterministic(first, second),
    }
    return {name: check.flag for name, check in checks.items()}, [c.warning for c in checks.values() if c.flag]
