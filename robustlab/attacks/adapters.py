"""The library attacks (torchattacks, AutoAttack), each registered with what its spec may set."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Iterable, Protocol

import torch
import torch.nn as nn
import torchattacks
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
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
        with _drawing(draws, todo):  # the failed images' streams go on
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
        n_targets = _target_classes(spec.name, num_classes)
        attack = APGDAttack_targeted(model, n_target_classes=n_targets, **common)
        return _apgd_runs(attack, x, y, draws, targets=range(2, n_targets + 2))
    return _apgd_runs(APGDAttack(model, loss="ce", **common), x, y, draws, targets=(None,))


def _apgd_runs(attack: APGDAttack, x: torch.Tensor, y: torch.Tensor, draws: ImageDraws | None,
               targets: Iterable[int | None]) -> torch.Tensor:
    """APGD's perturb (APGDAttack's and APGDAttack_targeted's): one run per target class (None: untargeted) and
    restart on the images no earlier run broke. Rewritten because AutoAttack's loop draws each run's random starts
    for whichever images remain from one stream, so an image's start depended on the others; here each run draws
    from the streams of the images it attacks. Without draws it is AutoAttack's loop, draw for draw."""
    attack.init_hyperparam(x)
    adv = x.clone()
    with torch.no_grad():
        todo = attack.model(x).max(1)[1] == y
    torch.random.manual_seed(attack.seed)
    torch.cuda.random.manual_seed(attack.seed)
    for target in targets:
        for _ in range(attack.n_restarts):
            rows = todo.nonzero().squeeze(1)
            if not len(rows):
                return adv
            with _drawing(draws, todo):
                if target is not None:  # the target-th most likely class, as APGDAttack_targeted picks it
                    attack.y_target = attack.model(x[rows]).sort(dim=1)[1][:, -target]
                _, acc, _, adv_rows = attack.attack_single_run(x[rows].clone(), y[rows].clone())
            broken = acc == 0
            todo[rows[broken]] = False
            adv[rows[broken]] = adv_rows[broken]
    return adv


def _drawing(draws: ImageDraws | None, rows: torch.Tensor) -> ContextManager[Any]:
    """The per-image streams of the images `rows` (a mask) while an attack runs on them alone."""
    return draws.rows(rows) if draws is not None else nullcontext()


def _fab_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
           num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    # one restart draws nothing (FAB's first run starts at the image), so no image depends on another
    attack = FABAttack_PT(model, norm=spec.norm, n_restarts=1, n_iter=spec.steps, eps=spec.eps, seed=seed,
                          targeted=True, n_target_classes=_target_classes(spec.name, num_classes), device=x.device)
    return attack.perturb(x, y)


# AutoAttack's standard version: its attacks in its order, with its settings (steps and queries are the spec's)
AUTOATTACK_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square-aa")


def _autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
                num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    """AutoAttack.run_standard_evaluation's loop: each attack runs on the images the earlier ones left unbroken,
    and an image keeps the first adversarial example that broke it. Rewritten so that each attack draws from the
    streams of the images it attacks (see _apgd_runs); without draws it is AutoAttack's, draw for draw."""
    adv = x.clone()
    with torch.no_grad():
        todo = model(x).max(1)[1] == y
    for name in AUTOATTACK_STANDARD:
        rows = todo.nonzero().squeeze(1)
        if not len(rows):
            break
        entry = ATTACKS.get(name)
        part = AttackSpec(name=name, norm=spec.norm, eps=spec.eps, steps=spec.steps if entry.default_steps else 0,
                          alpha=None, restarts=1, queries=spec.queries if entry.default_queries else 0)
        with _drawing(draws, todo) as mine:
            adv_rows = entry.run(model, x[rows].clone(), y[rows].clone(), part, seed=seed, num_classes=num_classes,
                                 draws=mine)
        with torch.no_grad():
            broken = model(adv_rows).max(1)[1] != y[rows]
        todo[rows[broken]] = False
        adv[rows[broken]] = adv_rows[broken]
    return adv


def _square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, seed: int,
            num_classes: int, draws: ImageDraws | None) -> torch.Tensor:
    # AutoAttack's Square (standard version) keeps its step-size schedule in raw queries (made for 10,000); robustlab's
    # own `square` rescales it to the query budget, so that a short budget still walks the whole schedule
    attack = SquareAttack(model, norm=spec.norm, n_queries=spec.queries, eps=spec.eps, n_restarts=spec.restarts,
                          seed=seed, p_init=0.8, loss="margin", resc_schedule=spec.name == "square", device=x.device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        adv = x.clone()
        if correct.any():  # AutoAttack's Square attacks the correct images: their rows are the per-image streams'
            with _drawing(draws, correct):
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
                config="autoattack.APGD;loss=ce;rho=0.75;random_start_per_image",
                summary="APGD on the cross-entropy loss (AutoAttack)", image_independent=_always),
    AttackEntry("apgd-t", _apgd, ("Linf", "L2"), white_box=True, default_steps=100,
                config="autoattack.APGD-T;loss=dlr;targets=min(9,classes-1);random_start_per_image",
                summary="targeted APGD on the DLR loss, 9 target classes (AutoAttack)", image_independent=_always),
    AttackEntry("fab-t", _fab_t, ("Linf", "L2"), white_box=True, default_steps=100, restarts=False,
                config="autoattack.FAB-T;targets=min(9,classes-1)",
                summary="targeted FAB, minimal perturbation towards 9 target classes (AutoAttack)",
                image_independent=_always),
    AttackEntry("autoattack", _autoattack, ("Linf", "L2"), white_box=True, default_steps=100, fixed_steps=100,
                default_queries=5000, fixed_queries=5000, restarts=False,
                config="autoattack;version=standard;targets=min(9,classes-1);random_start_per_image",
                summary="AutoAttack, standard version: APGD-CE, APGD-T, FAB-T (100 steps), Square (5000 queries), "
                        "each on the images the earlier ones left unbroken",
                image_independent=_square_independent, cascade_phase=3),
    AttackEntry("square-aa", _square, ("Linf", "L2"), white_box=False, default_queries=5000, restarts=False,
                config="autoattack.Square;loss=margin;p_init=0.8;init_per_image_if_linf",
                summary="Square as AutoAttack's standard version runs it (step-size schedule in raw queries)",
                image_independent=_square_independent, cascade_phase=2),
    AttackEntry("square", _square, ("Linf", "L2"), white_box=False, default_queries=5000,
                config="autoattack.Square;loss=margin;p_init=0.8;resc_schedule;init_per_image_if_linf_1_restart",
                summary="Square, score-based black box (AutoAttack's, its step-size schedule rescaled to the "
                        "query budget)",
                image_independent=_square_independent, cascade_phase=2),
):
    ATTACKS.register(_entry.name, _entry)
