"""Attack suite files (TOML, in the repository's top-level attacks/ folder) -> validated AttackSpecs."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from robustlab.attacks.spec import AttackSpec, make_spec
from robustlab.errors import RobustlabError
from robustlab.registry import Registry

SUITES_DIR = Path(__file__).resolve().parents[2] / "attacks"
TOP_KEYS = ("attack", "description")
ATTACK_KEYS = ("alpha", "eps", "name", "norm", "restarts", "steps")


def suite_names() -> list[str]:
    """The suites in the repository's attacks/ folder (file names without .toml)."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml")) if SUITES_DIR.is_dir() else []


def resolve_suite(name_or_path: str | Path) -> Path:
    """A suite file: an existing path, or a bare name looked up in the repository's attacks/ folder."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or len(path.parts) > 1 or path.is_file():
        if not path.is_file():
            raise RobustlabError(f"attack suite file {path} does not exist; pass an existing .toml file or a suite "
                                 f"name ({', '.join(suite_names()) or 'none found'})")
        return path
    if not SUITES_DIR.is_dir():
        raise RobustlabError(f"attack suite {str(name_or_path)!r}: the suite folder {SUITES_DIR} is missing (robustlab "
                             "is installed without its repository); pass the path to a suite file")
    known: Registry[Path] = Registry("attack suite")
    for name in suite_names():
        known.register(name, SUITES_DIR / f"{name}.toml")
    return known.get(str(name_or_path))


def _locator(text: str, path: Path) -> Any:
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
    path = resolve_suite(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RobustlabError(f"{path}: not a valid TOML file ({e}); fix the syntax") from None
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
                raise RobustlabError(f"{where(i)}: missing key {key!r}; every attack needs name and eps")
        for key in ("name", "norm"):
            if key in table and not isinstance(table[key], str):
                raise RobustlabError(f"{where(i, key)}: {table[key]!r} is not a string; quote it")
        eps_list = table["eps"] if isinstance(table["eps"], list) else [table["eps"]]
        if not eps_list:
            raise RobustlabError(f"{where(i, 'eps')}: the eps list is empty; give at least one eps, such as \"8/255\"")
        for eps in eps_list:
            try:
                spec = make_spec(table["name"], eps=eps, norm=table.get("norm"), steps=table.get("steps"),
                                 alpha=table.get("alpha"), restarts=table.get("restarts", 1))
            except RobustlabError as e:
                raise RobustlabError(f"{where(i)}: {e}") from None
            if spec in specs:
                raise RobustlabError(f"{where(i, 'eps')}: repeats an earlier attack ({spec.name}, eps {eps}); "
                                     "remove the duplicate")
            specs.append(spec)
    return specs
