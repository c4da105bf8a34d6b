"""Corruption suites: which corruptions, severities (or explicit levels) and parameter set a run uses."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustlab.corruptions.engine import CORRUPTIONS
from robustlab.corruptions.parameters import OLD_PARAMETERS_KEY, PARAMETER_SETS, SET_NAMES
from robustlab.errors import RobustlabError
from robustlab.suites import read_toml, resolve_suite, suite_error, suite_names

KEYS = {"description", "parameters", "severities", "corruptions", "levels", "reencode"}
ABSURD = 100  # a level this many times the largest published parameter of its corruption is a typo, not a test


def published_max(name: str) -> float:
    """The largest number in a corruption's published parameters, over both parameter sets and every severity."""
    def numbers(v: Any) -> list[float]:
        return [x for item in v for x in numbers(item)] if isinstance(v, (list, tuple, np.ndarray)) else [float(v)]
    return max(max(numbers(PARAMETER_SETS[parameters][name])) for parameters in PARAMETER_SETS)


def published_shape(name: str) -> int | None:
    """How many numbers a level of the corruption has: None for one number, else the length of its tuple."""
    first = PARAMETER_SETS["cifar"][name][0]
    return len(first) if isinstance(first, (list, tuple)) else None


@dataclass(frozen=True)
class CorruptionCell:
    """One corruption at one severity; `param` overrides the published value when the suite gives levels."""
    corruption: str
    severity: int
    param: Any = None


@dataclass(frozen=True)
class CorruptionSuite:
    """`reencode`: whether generated images are re-encoded as the published files were (JPEG quality 85 for
    ImageNet-C); None: the parameter set's published practice (engine.PUBLISHED_JPEG_QUALITY)."""
    name: str
    description: str
    parameters: str
    cells: tuple[CorruptionCell, ...]
    reencode: bool | None = None


def parameter_set(data: dict[str, Any], path: Path) -> str:
    """The suite's parameter set (`parameters`, or its old name), 'cifar' when it names none."""
    if OLD_PARAMETERS_KEY in data and "parameters" in data:
        raise suite_error(path, OLD_PARAMETERS_KEY, f"{OLD_PARAMETERS_KEY} is the old name of parameters; "
                                                    "give parameters only")
    key = OLD_PARAMETERS_KEY if OLD_PARAMETERS_KEY in data else "parameters"
    parameters = data.get(key, "cifar")
    if parameters not in PARAMETER_SETS:
        raise suite_error(path, key, f"{parameters!r} is not a parameter set; use {SET_NAMES}")
    return str(parameters)


def parse_suite(data: dict[str, Any], path: Path) -> CorruptionSuite:
    unknown = set(data) - KEYS - {OLD_PARAMETERS_KEY}
    if unknown:
        key = sorted(unknown)[0]
        raise suite_error(path, key, f"unknown key; allowed: {', '.join(sorted(KEYS))}")
    parameters = parameter_set(data, path)
    severities = data.get("severities", [1, 2, 3, 4, 5])
    if not (isinstance(severities, list) and severities and all(s in (1, 2, 3, 4, 5) for s in severities)):
        raise suite_error(path, "severities", f"{severities!r} must be a non-empty list of integers 1..5")
    names = data.get("corruptions", [])
    levels = data.get("levels", {})
    if not isinstance(names, list) or not isinstance(levels, dict) or not (names or levels):
        raise suite_error(path, "corruptions", "give a list of corruption names and/or a [levels] section")
    for name in [*names, *levels]:
        if name not in CORRUPTIONS:
            raise suite_error(path, name if name in levels else "corruptions", CORRUPTIONS.unknown_message(name))
    cells = [CorruptionCell(n, s) for n in names for s in severities]
    for name, values in levels.items():
        if not (isinstance(values, list) and values):
            raise suite_error(path, name, "levels must be a non-empty list of parameter values")
        for v in values:
            numbers = v if isinstance(v, list) else [v]
            if isinstance(v, bool) or not numbers or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
                raise suite_error(path, name, f"level {v!r} is not a number or a list of numbers")
            if not all(math.isfinite(x) and x >= 0 for x in numbers):
                raise suite_error(path, name, f"level {v!r} must be finite and >= 0")
            shape = published_shape(name)
            if (len(numbers) if isinstance(v, list) else None) != shape:
                example = PARAMETER_SETS["cifar"][name][0]
                raise suite_error(path, name, f"level {v!r} has another shape than {name}'s parameter "
                                              f"({'one number' if shape is None else f'a list of {shape} numbers'}, "
                                              f"e.g. {list(example) if shape is not None else example}); use "
                                              "levels of that shape")
            if max(numbers) > ABSURD * published_max(name):
                raise suite_error(path, name, f"level {v!r} is over {ABSURD}x the largest published parameter of "
                                              f"{name} ({published_max(name):g}); use a level of that order")
        cells += [CorruptionCell(name, i, tuple(v) if isinstance(v, list) else v) for i, v in enumerate(values, 1)]
    reencode = data.get("reencode")
    if reencode is not None and not isinstance(reencode, bool):
        raise suite_error(path, "reencode", f"{reencode!r} must be true or false")
    return CorruptionSuite(path.stem, str(data.get("description", "")), parameters, tuple(cells), reencode)


def load_corruption_suite(name_or_path: str | Path) -> CorruptionSuite:
    """A suite by name (a shipped one) or by path; invalid files give file, line, reason."""
    path = resolve_suite("corruptions", name_or_path)
    return parse_suite(read_toml(path), path)


def suite_from_names(names: str, severities: list[int], parameters: str) -> CorruptionSuite:
    """An ad-hoc suite from a comma list of corruption names (the CLI's `--corruptions a,b`)."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for n in chosen:
        if n not in CORRUPTIONS:
            raise RobustlabError(f"{CORRUPTIONS.unknown_message(n)}; or name a suite: "
                                 f"{', '.join(suite_names('corruptions'))}")
    return CorruptionSuite("custom", "", parameters, tuple(CorruptionCell(n, s) for n in chosen for s in severities))
