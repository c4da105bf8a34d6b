"""The worst-case mode (`eval --cascade`): attacks run cheap first, and an image already broken at the same or a
smaller eps of the same norm, for the same model variant, is not attacked again.

An image's worst case at (norm, eps) is broken as soon as one attack at any eps' <= eps breaks it (the eps' ball
lies inside the eps ball), or as soon as the clean cell finds it misclassified, so skipping it changes no
worst-case figure, provided every attack that skips images gives each image the adversarial example it would get
in the full batch: only attacks whose entry is `image_independent` skip (their random starts are drawn per image),
and never under per-set adaptive lambda (selected on the batch being attacked). The others run on every image
and still mark what they break."""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from robustlab.attacks import ATTACKS, AttackSpec
from robustlab.cells import Cell
from robustlab.outcomes import Outcomes
from robustlab.schema import NONE, LambdaMode


def cascade_order(cells: Sequence[Cell]) -> list[Cell]:
    """Unattacked cells first, then attacks by norm, eps and cost: a model's own gradients, then transfer, then
    black-box, then ensembles (a stable sort: the given order otherwise)."""
    def rank(cell: Cell) -> tuple:
        spec = cell.attack
        if spec is None:
            return (0,)
        phase = 1 if cell.source else ATTACKS.get(spec.name).cascade_phase
        return (1, spec.norm, spec.eps, phase)
    return sorted(cells, key=rank)


def skips_images(spec: AttackSpec, mode: LambdaMode) -> bool:
    """Whether the worst-case mode may leave out images already broken, for this attack and lambda mode."""
    return ATTACKS.get(spec.name).image_independent(spec) and mode != LambdaMode.ADAPTIVE_SET


def clean_decides(cell: Cell, mode: LambdaMode) -> bool:
    """Whether a cell's wrong images are wrong under every attack of the same variant: the clean cell, unless
    per-set selection chose the clean lambda on the whole set (under attack it is chosen per batch)."""
    return cell.corruption == NONE and cell.attack is None and mode != LambdaMode.ADAPTIVE_SET


class Cascade:
    """Per model variant (any hashable key) and norm, the smallest eps at which each image (by dataset index) was
    broken so far; an image the variant gets wrong on clean data is broken at every eps of every norm."""

    def __init__(self) -> None:
        self._broken_at: dict[tuple[Hashable, str], dict[int, float]] = {}
        self._wrong: dict[Hashable, set[int]] = {}

    def broken(self, variant: Hashable, norm: str, eps: float, index: np.ndarray) -> np.ndarray:
        """Which of the images `index` are already broken at eps or less."""
        seen, wrong = self._broken_at.get((variant, norm), {}), self._wrong.get(variant, set())
        return np.array([int(i) in wrong or seen.get(int(i), np.inf) <= eps for i in index], dtype=bool)

    def record(self, variant: Hashable, norm: str, eps: float, outcomes: Outcomes) -> None:
        """The images that are not robust in a cell at eps (an attack's outcomes, a skipped image included)."""
        seen = self._broken_at.setdefault((variant, norm), {})
        for i in outcomes.index[~outcomes.ok]:
            seen[int(i)] = min(seen.get(int(i), np.inf), eps)

    def remember(self, variant: Hashable, cell: Cell, outcomes: Outcomes) -> None:
        """What a finished cell tells: the images an attack broke, or those clean data gets wrong."""
        if cell.attack is not None:
            self.record(variant, cell.attack.norm, cell.attack.eps, outcomes)
        else:
            self.record_clean(variant, outcomes)

    def record_clean(self, variant: Hashable, outcomes: Outcomes) -> None:
        """The variant's clean cell: the images it gets wrong (not robust under any attack, which judges them
        with the same forward pass)."""
        self._wrong.setdefault(variant, set()).update(int(i) for i in outcomes.index[~outcomes.ok])
