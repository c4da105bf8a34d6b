"""The attack registry: name -> AttackEntry (what an attack supports and how it runs); the adapters fill it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.attacks.spec import AttackSpec


@dataclass(frozen=True)
class AttackEntry:
    """A registered attack: the norms it supports (the first is the default) and what its spec may set.

    Its budget is counted in gradient `steps` (iterations per restart) and/or model `queries` (score-based search);
    `config` names every other setting robustlab fixes that changes its numbers (recorded in each row)."""
    name: str
    run: Callable[..., torch.Tensor]  # (model, x, y, spec, *, seed, num_classes, draws) -> adversarial x
    norms: tuple[str, ...]
    white_box: bool
    summary: str
    config: str
    default_steps: int = 0  # 0: the attack takes no gradient steps
    fixed_steps: int | None = None  # the attack always runs this many steps
    default_queries: int = 0  # 0: the attack makes no score-based queries
    fixed_queries: int | None = None
    restarts: bool = True
    step_size: bool = False  # takes alpha
    # whether, under a spec, each image's adversarial example depends on its own random stream only (not on the
    # other images of its batch): such attacks may skip images in the worst-case mode (--cascade)
    image_independent: Callable[[AttackSpec], bool] = lambda spec: False  # noqa: E731
    cascade_phase: int = 0  # the worst-case mode runs cheap attacks first: white-box 0, black-box 2, ensembles 3


ATTACKS: Registry[AttackEntry] = Registry("attack")
