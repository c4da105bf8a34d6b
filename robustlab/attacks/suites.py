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
    """where(table, key) -> "FILE line N ([[attack]] #table, key)", finding lines of [[attack]] tables."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*attack\s*\]\]", line)]

    def where(table: int, key: str | None = None) -> str:
        label = f"[[attack]] #{table + 1}" + (f", key {key!r}" if key else "")
        if table >= len(headers):  # tables written inline: no line to point at
            return f"{path} ({label})"
        start = headers[table]
        end = headers[table + 1] if table + 1 < len(headers) else len(lines)
        line = next((i for i in range(start, end) if key and re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), start)
        return f"{path} line {line + 1} ({label})"

    return where


def load_attack_suite(name_or_path: str | Path) -> list[AttackSpec]:
    """The AttackSpecs of a suite file (one per attack table and eps); bad files name the file, line and reason."""
    path = suites.resolve_suite("attacks", name_or_path)
    data, text = suites.read_toml(path), path.read_text(encoding="utf-8")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise RobustlabError(f"{path}: unknown top-level key {unknown[0]!r}; a suite holds {' and '.join(TOP_KEYS)}")
    tables = data.get("attack")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise RobustlabError(f"{path}: no [[attack]] tables; add one [[attack]] table per attack")
    where = _locator(text, path)
    specs: list[AttackSpec] = []
    for i, table in enumerate(tables):
        for key in sorted(table):
            if key not in ATTACK_KEYS:
                raise RobustlabError(f"{where(i, key)}: unknown key; known keys: {', '.join(ATTACK_KEYS)}")
        for key in ("name", "eps"):
            if key not in table:
                raise RobustlabError(f"{where(i)}: missing key {key!r}; add it (every attack needs name and eps)")
        for key in ("name", "norm"):
            if key in table and not isinstance(table[key], str):
                raise RobustlabError(f"{where(i, key)}: {table[key]!r} is not a string; quote it")
        eps_list = table["eps"] if isinstance(table["eps"], list) else [table["eps"]]
        if not eps_list:
            raise RobustlabError(f"{where(i, 'eps')}: the eps list is empty; give at least one eps, such as \"8/255\"")
        for eps in eps_list:
            try:
                spec = make_spec(table["name"], eps=eps, norm=table.get("norm"), steps=table.get("steps"),
                                 alpha=table.get("alpha"), restarts=table.get("restarts", 1),
                                 queries=table.get("queries"))
            except RobustlabError as e:
                raise RobustlabError(f"{where(i)}: {e}") from None
            if spec in specs:
                raise RobustlabError(f"{where(i, 'eps')}: repeats an earlier attack ({spec.name}, eps {eps}); "
                                     "remove the duplicate")
            specs.append(spec)
    return specs
