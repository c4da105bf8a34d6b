"""What an attack run is: eps parsing and the validated, fully resolved AttackSpec."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from robustlab.attacks.registry import ATTACKS, AttackEntry
from robustlab.errors import RobustlabError

NORMS = ("Linf", "L2")
_EPS = re.compile(r"\s*([^/\s]+)\s*(?:/\s*([^/\s]+)\s*)?")


def _number(part: str, text: object, what: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise RobustlabError(f"{what} {text!r} is not a number; write it as 8/255 or 0.0314") from None
    if not math.isfinite(value):
        raise RobustlabError(f"{what} {text!r} is not finite; write it as 8/255 or 0.0314")
    if value < 0:
        raise RobustlabError(f"{what} {text!r} is negative; give a size >= 0, such as 8/255")
    return value


def parse_eps(text: str | float, *, what: str = "eps") -> float:
    """A budget from "8/255", "0.0314" or a number; refuses negative, NaN, inf and garbage (`what` names it)."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise RobustlabError(f"{what} {text!r} is not a number; write it as 8/255 or 0.0314")
    if not isinstance(text, str):
        return _number(str(text), text, what)
    match = _EPS.fullmatch(text)
    if match is None:
        raise RobustlabError(f"{what} {text!r} is not a number or a fraction; write it as 8/255 or 0.0314")
    numerator, denominator = match.groups()
    value = _number(numerator, text, what)
    if denominator is None:
        return value
    divisor = _number(denominator, text, what)
    if divisor == 0:
        raise RobustlabError(f"{what} {text!r} divides by zero; write it as 8/255 or 0.0314")
    return value / divisor


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration, every field resolved (build it with make_spec); the seed is not part of it.
    `steps` counts gradient iterations per restart, `queries` score-based model queries (0: none of that kind)."""
    name: str
    norm: str
    eps: float
    steps: int
    alpha: float | None
    restarts: int
    queries: int = 0

    @property
    def config(self) -> str:
        """The settings robustlab fixes for this attack beyond the fields (recorded in every row)."""
        return _entry(self.name).config

    def __post_init__(self) -> None:
        entry = _entry(self.name)
        if self.norm not in entry.norms:
            raise RobustlabError(f"attack {self.name} does not support norm {self.norm!r}; "
                                 f"use {' or '.join(entry.norms)}" + _other_attacks(self.norm))
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) \
                or self.eps <= 0:
            raise RobustlabError(f"attack {self.name}: eps {self.eps!r} must be a finite number > 0 "
                                 "(clean accuracy is attack 'none')")
        if self.norm == "Linf" and self.eps > 1:
            raise RobustlabError(f"attack {self.name}: Linf eps {self.eps:g} exceeds 1, the whole pixel range; "
                                 f"did you mean {self.eps:g}/255?")
        for what, default, fixed, other in (("steps", entry.default_steps, entry.fixed_steps, "queries"),
                                            ("queries", entry.default_queries, entry.fixed_queries, "steps")):
            value = getattr(self, what)
            if not default:
                if value != 0:
                    raise RobustlabError(f"attack {self.name} takes no {what}, got {what}={value!r}; its budget is "
                                         f"{other}: use --{other} (suite key {other})")
                continue
            _positive_int(self.name, what, value)
            if fixed is not None and value != fixed:
                raise RobustlabError(f"attack {self.name} always runs {fixed} {what}, got {what}={value}; drop {what}")
        _positive_int(self.name, "restarts", self.restarts)
        if self.restarts > 1 and not entry.restarts:
            raise RobustlabError(f"attack {self.name} has no random restarts, got restarts={self.restarts}; "
                                 "drop restarts")
        if self.alpha is not None:
            if not entry.step_size:
                raise RobustlabError(f"attack {self.name} sets its own step size, got alpha={self.alpha!r}; "
                                     "drop alpha")
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                    or not math.isfinite(self.alpha) or self.alpha <= 0:
                raise RobustlabError(f"attack {self.name}: alpha {self.alpha!r} must be a finite number > 0")
        elif entry.step_size:
            raise RobustlabError(f"attack {self.name} needs a step size alpha; build the spec with make_spec")


def _entry(name: object) -> AttackEntry:
    if not isinstance(name, str):
        raise RobustlabError(f"attack name {name!r} is not a string; known: {', '.join(ATTACKS)}")
    return ATTACKS.get(name)


def _positive_int(name: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RobustlabError(f"attack {name}: {field} must be a whole number >= 1, got {value!r}")


def _other_attacks(norm: str) -> str:
    others = [name for name, entry in ATTACKS.items() if norm in entry.norms]
    return f", or an attack that supports {norm}: {', '.join(others)}" if others else ""


def make_spec(name: str, *, eps: str | float, norm: str | None = None, steps: int | None = None,
              alpha: str | float | None = None, restarts: int = 1, queries: int | None = None) -> AttackSpec:
    """A validated AttackSpec; norm, steps, queries and alpha default from the attack (PGD: alpha = 2.5 * eps /
    steps)."""
    entry = _entry(name)
    if norm is None:
        norm = entry.norms[0]
    elif norm not in NORMS:
        raise RobustlabError(f"attack {name}: unknown norm {norm!r}; use {' or '.join(NORMS)}")
    eps = parse_eps(eps)
    if steps is None:
        steps = entry.fixed_steps or entry.default_steps
    if queries is None:
        queries = entry.fixed_queries or entry.default_queries
    if alpha is not None:
        alpha = parse_eps(alpha, what=f"attack {name}: alpha")
    elif entry.step_size and isinstance(steps, int) and steps > 0:
        alpha = 2.5 * eps / steps  # the robustness library's rule: the steps can cross the ball from any start
    return AttackSpec(name=name, norm=norm, eps=eps, steps=steps, alpha=alpha, restarts=restarts, queries=queries)
