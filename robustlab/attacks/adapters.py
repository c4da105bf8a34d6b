"""The library attacks (torchattacks, AutoAttack), each registered with what its spec may set."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import torch
import torch.nn as nn
import torchattacks
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.square import SquareAttack

from robustlab.attacks.draws import ImageDraws
from robustlab.attacks.registry import ATTACKS, AttackEntry
from robustlab.attacks.spec import AttackSpec
from robustlab.errors import RobustlabError


class AttackFn(Protocol):
    """Runs an attack on float32 pixels x (labels y) on x's device and returns the adversarial batch."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
                 num_classes: int, draws: ImageDraws | None) -> torch.Tensor: ...


def _torchattack(attack: torchattacks.attack.Attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    attack.set_device(x.device)
    return attack(x, y)


def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
          num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    return _torchattack(torchattacks.FGSM(model, eps=spec.eps), x, y)


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
         num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    cls = torchattacks.PGD if spec.norm == "Linf" else torchattacks.PGDL2
    attack = cls(model, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True)
    adv = _torchattack(attack, x, y)
    for _ in range(spec.restarts - 1):  # torchattacks has no restarts: rerun from new random starts where it failed
        with torch.no_grad():
            todo = model(adv).argmax(1) == y
        if not todo.any():
            break
        with draws.rows(todo) if draws is not None else nullcontext():  # the failed images' streams go on
            adv[todo] = _torchattack(attack, x[todo], y[todo])
    return adv


def _target_classes(name: str, num_classes: int) -> int:
    if num_classes < 4:
        raise RobustlabError(f"attack {name} needs a model with at least 4 classes (targeted DLR loss), this one "
                             f"has {num_classes}; use apgd-ce or pgd-linf")
    return min(9, num_classes - 1)  # AutoAttack's standard 9 target classes, or all there are


def _apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
          num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    common = dict(n_iter=spec.steps, norm=spec.norm, n_restarts=spec.restarts, eps=spec.eps, seed=seed,
                  device=x.device)
    if spec.name == "apgd-t":
        attack = APGDAttack_targeted(model, n_target_classes=_target_classes(spec.name, num_classes), **common)
    else:
        attack = APGDAttack(model, loss="ce", **common)
    return attack.perturb(x, y)


def _autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
                num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    attack = AutoAttack(model, norm=spec.norm, eps=spec.eps, seed=seed, version="standard", device=x.device)
    attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = _target_classes(spec.name, num_classes)
    adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
    return adv


def _square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
            num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    attack = SquareAttack(model, norm=spec.norm, n_queries=spec.queries, eps=spec.eps, n_restarts=spec.restarts,
                          seed=seed, p_init=0.8, loss="margin", resc_schedule=True, device=x.device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        adv = x.clone()
        if correct.any():  # AutoAttack's Square attacks the correct images: their rows are the per-image streams'
            with draws.rows(correct) if draws is not None else nullcontext():
                adv[correct] = attack.perturb(x[correct], y[correct])
        return adv


def _always(spec: AttackSpec) -> bool:
    return True


def _square_independent(spec: AttackSpec) -> bool:
    """Linf Square draws per image only its initial stripes (each later square is shared by the batch, from the
    batch's seed); L2 Square and restarts draw for the images still unbroken, which depends on the batch."""
    return spec.norm == "Linf" and spec.restarts == 1


for _entry in (
    AttackEntry("fgsm", _fgsm, ("Linf",), white_box=True, default_steps=1, fixed_steps=1, restarts=False,
                config="torchattacks.FGSM", summary="FGSM, one signed-gradient step (torchattacks)",
                image_independent=_always),
    AttackEntry("pgd-linf", _pgd, ("Linf",), white_box=True, default_steps=10, step_size=True,
                config="torchattacks.PGD;random_start_per_image",
                summary="PGD with a random start per image, Linf (torchattacks.PGD)",
                image_independent=_always),
    AttackEntry("pgd-l2", _pgd, ("L2",), white_box=True, default_steps=10, step_size=True,
                config="torchattacks.PGDL2;random_start_per_image",
                summary="PGD with a random start per image, L2 (torchattacks.PGDL2)",
                image_independent=_always),
    AttackEntry("apgd-ce", _apgd, ("Linf", "L2"), white_box=True, default_steps=100,
                config="autoattack.APGD;loss=ce;rho=0.75", summary="APGD on the cross-entropy loss (AutoAttack)"),
    AttackEntry("apgd-t", _apgd, ("Linf", "L2"), white_box=True, default_steps=100,
                config="autoattack.APGD-T;loss=dlr;targets=min(9,classes-1)",
                summary="targeted APGD on the DLR loss, 9 target classes (AutoAttack)"),
    AttackEntry("autoattack", _autoattack, ("Linf", "L2"), white_box=True, default_steps=100, fixed_steps=100,
                default_queries=5000, fixed_queries=5000, restarts=False,
                config="autoattack;version=standard;targets=min(9,classes-1)", cascade_phase=3,
                summary="AutoAttack, standard version: APGD-CE, APGD-T, FAB-T (100 steps), Square (5000 queries)"),
    AttackEntry("square", _square, ("Linf", "L2"), white_box=False, default_queries=5000,
                config="autoattack.Square;loss=margin;p_init=0.8;resc_schedule;init_per_image_if_linf_1_restart",
                summary="Square, score-based black box (AutoAttack's, its step-size schedule rescaled to the "
                        "query budget)",
                image_independent=_square_independent, cascade_phase=2),
):
    ATTACKS.register(_entry.name, _entry)
