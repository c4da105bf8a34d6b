"""Attack suite files (TOML: shipped in robustlab/suites/attacks/, or a user's file) -> validated AttackSpecs."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from robustlab import suites
from robustlab.attacks.spec import AttackSpec, make_spec
from robustlab.errors import RobustlabError

TOP_KEYS = ("attack", "description")
ATTACK_KEYS = ("alpha", "eps", "name", "norm", "queries", "restarts", "steps")


def attack_suite_names() -> list[str]:
    """The shipped attack suites."""
    return suites.suite_names("attacks")


def _locator(text: str, path: Path) -> Callable[..., str]:
    """where(entry, key) -> "FILE line N ([[attack]] #entry, key)", finding the lines of [[attack]] entries."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*attack\s*\]\]", line)]

    def where(entry: int, key: str | None = None) -> str:
        label = f"[[attack]] #{entry + 1}" + (f", key {key!r}" if key else "")
        if entry >= len(headers):  # entries written inline: no line to point at
            return f"{path} ({label})"
        start = headers[entry]
        end = headers[entry + 1] if entry + 1 < len(headers) else len(lines)
        line = next((i for i in range(start, end) if key and re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), start)
        return f"{path} line {line + 1} ({label})"

    return where


def load_attack_suite(name_or_path: str | Path) -> list[AttackSpec]:
    """The AttackSpecs of a suite file (one per [[attack]] entry and eps); bad files name the file, line and reason."""
    path = suites.resolve_suite("attacks", name_or_path)
    data, text = suites.read_toml(path), path.read_text(encoding="utf-8")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise RobustlabError(f"{path}: unknown top-level key {unknown[0]!r}; a suite holds {' and '.join(TOP_KEYS)}")
    entries = data.get("attack")
    if not isinstance(entries, list) or not entries or not all(isinstance(t, dict) for t in entries):
        raise RobustlabError(f"{path}: no [[attack]] entries; add one [[attack]] entry per attack")
    where = _locator(text, path)
    specs: list[AttackSpec] = []
    for i, entry in enumerate(entries):
        for key in sorted(entry):
            if key not in ATTACK_KEYS:
                raise RobustlabError(f"{where(i, key)}: unknown key; known keys: {', '.join(ATTACK_KEYS)}")
        for key in ("name", "eps"):
            if key not in entry:
                raise RobustlabError(f"{where(i)}: missing key {key!r}; add it (every attack needs name and eps)")
        for key in ("name", "norm"):
            if key in entry and not isinstance(entry[key], str):
                raise RobustlabError(f"{where(i, key)}: {entry[key]!r} is not a string; quote it")
        eps_list = entry["eps"] if isinstance(entry["eps"], list) else [entry["eps"]]
        if not eps_list:
            raise RobustlabError(f"{where(i, 'eps')}: the eps list is empty; give at least one eps, such as \"8/255\"")
        for eps in eps_list:
            try:
                spec = make_spec(entry["name"], eps=eps, norm=entry.get("norm"), steps=entry.get("steps"),
                                 alpha=entry.get("alpha"), restarts=entry.get("restarts", 1),
                                 queries=entry.get("queries"))
            except RobustlabError as e:
                raise RobustlabError(f"{where(i)}: {e}") from None
            if spec in specs:
                raise RobustlabError(f"{where(i, 'eps')}: repeats an earlier attack ({spec.name}, eps {eps}); "
                                     "remove the duplicate")
            specs.append(spec)
    return specs
