"""The official SDNet experiment configuration (its yacs YAML files): the CSC settings a checkpoint's keys cannot show.

The official code reads `MODEL.NUM_LAYERS`, `MU`, `LAMBDA`, `NONEGATIVE`, `WNORM` from the configuration it was
trained with (`Lib/config/default.py` holds the defaults, `experiments/*.yaml` the overrides); a checkpoint loaded
without it can only assume those defaults. This module reads such a file and checks it against the keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from robustlab.errors import RobustlabError

CONFIG_SUFFIXES = (".yaml", ".yml")
# MODEL.<key> -> robustlab's CSC argument (robustlab.models.sdnet.CSC_DEFAULTS holds the same defaults)
HIDDEN_KEYS = {"NUM_LAYERS": "n_steps", "MU": "mu", "LAMBDA": "lmbda", "NONEGATIVE": "non_negative",
               "WNORM": "w_norm"}
# settings of the official code that robustlab does not implement, with the only value it accepts
UNSUPPORTED = {"SQUARE_NOISE": True, "POOLING": False, "ADAPTIVELAMBDA": False}
# MODEL.NAME -> robustlab arch (the "-all" names get "-noshortcut" from SHORTCUT)
NAMES = {"sdnet18": "sdnet18", "sdnet34": "sdnet34", "sdnet18_all": "sdnet18-all", "sdnet34_all": "sdnet34-all",
         "resnet18": "resnet18", "resnet34": "resnet34"}
# the integers robustlab reads, bounded far beyond the official values (2 FISTA steps, 10 to 1000 classes, expansion
# 1): NUM_LAYERS 10**30 would unroll a solver that never ends
INTEGER_RANGES = {"NUM_LAYERS": (1, 100), "NUM_CLASSES": (1, 100_000), "EXPANSION_FACTOR": (1, 64)}
MAX_CONFIG_BYTES = 1 << 20  # the official files are under 1 KB


@dataclass(frozen=True)
class CscSettings:
    """Where a loaded SDNet's hidden CSC settings came from, and which were assumed at their defaults."""
    source: str  # "checkpoint", "official config PATH" or "defaults"
    assumed: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "assumed_defaults": dict(self.assumed)}

    def notice(self, model: str) -> str | None:
        """One line saying which defaults were assumed (None when nothing was)."""
        if not self.assumed:
            return None
        values = ", ".join(f"{k}={v}" for k, v in self.assumed.items())
        return (f"notice: {model}: no experiment configuration found, assumed the official defaults {values}; "
                f"pass --official-config FILE (the YAML it was trained with) or put one of the same stem beside it")


@dataclass(frozen=True)
class OfficialConfig:
    """The parts of an official experiment configuration robustlab uses."""
    path: Path
    name: str | None
    num_classes: int | None
    shortcut: bool | None
    expansion: int | None
    hidden: dict[str, Any]  # robustlab CSC argument -> value, only those the file sets

    def arch(self) -> str | None:
        """The robustlab arch MODEL.NAME (and SHORTCUT) names, None when NAME is absent."""
        if self.name is None:
            return None
        arch = NAMES[self.name]
        return arch + "-noshortcut" if arch.endswith("-all") and self.shortcut is False else arch


def beside(checkpoint: Path) -> Path | None:
    """A configuration file of the checkpoint's stem next to it (`model_best.pth.tar` -> `model_best.yaml`)."""
    stem = checkpoint.name.split(".")[0]
    return next((p for p in (checkpoint.with_name(stem + s) for s in CONFIG_SUFFIXES) if p.is_file()), None)


def _shown(value: Any) -> str:
    """repr(value) cut to 200 characters, for an error line."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _integer_in(key: str) -> tuple[Callable[[int], bool], str]:
    """The check of an integer key and what it says when the check fails."""
    low, high = INTEGER_RANGES[key]
    return (lambda v: low <= v <= high), f"an integer in {low}..{high}"


def _load_yaml(path: Path) -> Any:
    """The YAML document in path; a file over MAX_CONFIG_BYTES, invalid YAML and any alias are one line."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        """Refuses YAML aliases: nested ones expand exponentially (a 500-byte file can stand for gigabytes), and the
        official configurations use none."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise RobustlabError(f"{path} uses YAML aliases (*{event.anchor[:50]}, line "
                                     f"{event.start_mark.line + 1}), which official configurations do not; remove "
                                     "them (write their values out)")
            return super().compose_node(parent, index)

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise RobustlabError(f"cannot read official config {path}: {e.strerror or e}; check the path") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise RobustlabError(f"{path} is over {MAX_CONFIG_BYTES >> 20} MiB, not an official experiment configuration "
                             "(those are under 1 KB); pass experiments/<name>.yaml")
    try:
        return yaml.load(raw.decode("utf-8"), Loader=NoAliases)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise RobustlabError(f"{path} is not a YAML file ({str(e).splitlines()[0][:200]}); pass the official "
                             "experiment configuration (experiments/*.yaml)") from None


def read_official_config(path: str | Path) -> OfficialConfig:
    """Parse and check one official yacs YAML file; every problem is one line naming the file and key."""
    path = Path(path)
    doc = _load_yaml(path)
    model = doc.get("MODEL") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise RobustlabError(f"{path} has no MODEL section; pass the official experiment configuration "
                             "(experiments/*.yaml)")

    def get(key: str, kind: type, check: Callable[[Any], bool] = lambda v: True, what: str = "") -> Any:
        if key not in model:
            return None
        value = model[key]
        if key == "LAMBDA" and isinstance(value, list) and value:
            value = value[0]  # the official code uses LAMBDA[0]
        ok = isinstance(value, bool) if kind is bool else (isinstance(value, kind) and not isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value, ok = float(value), True
            except OverflowError:  # an integer beyond every float
                ok = False
        if not ok or not check(value):
            raise RobustlabError(f"{path}: MODEL.{key} is {_shown(model[key])}, not {what or kind.__name__}; fix the "
                                 "file, or pass the configuration the checkpoint was trained with")
        return value

    for key, accepted in UNSUPPORTED.items():
        if key in model and model[key] != accepted:
            raise RobustlabError(f"{path}: MODEL.{key} {_shown(model[key])} is not supported by robustlab (only "
                                 f"{accepted}); such a checkpoint would compute another network")
    name = get("NAME", str, lambda v: v in NAMES, f"one of {', '.join(NAMES)}")

    def finite_nonneg(v: float) -> bool:
        return math.isfinite(v) and v >= 0

    values = {"n_steps": get("NUM_LAYERS", int, *_integer_in("NUM_LAYERS")),
              "mu": get("MU", float, finite_nonneg, "a finite number >= 0"),
              "lmbda": get("LAMBDA", float, finite_nonneg, "a finite number >= 0 (or a list of them)"),
              "non_negative": get("NONEGATIVE", bool), "w_norm": get("WNORM", bool)}
    return OfficialConfig(path=path, name=name,
                          num_classes=get("NUM_CLASSES", int, *_integer_in("NUM_CLASSES")),
                          shortcut=get("SHORTCUT", bool),
                          expansion=get("EXPANSION_FACTOR", int, *_integer_in("EXPANSION_FACTOR")),
                          hidden={k: v for k, v in values.items() if v is not None})
