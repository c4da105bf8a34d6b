"""Suite files: small declarative TOML files. The shipped ones are package data (`robustlab/suites/corruptions/`,
`robustlab/suites/attacks/`, which the repository's top-level corruptions/ and attacks/ link to); a user's are
given by path."""
from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("corruptions", "attacks")


def suite_dir(kind: str) -> Path:
    """The folder of the shipped suite files of a kind ('corruptions' or 'attacks'), inside the installed package."""
    if kind not in KINDS:
        raise ValueError(f"suite kind must be one of {KINDS}, not {kind!r}")
    return Path(str(resources.files(__name__).joinpath(kind)))


def suite_names(kind: str) -> list[str]:
    folder = suite_dir(kind)
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def resolve_suite(kind: str, name_or_path: str | Path) -> Path:
    """A suite file given as a path, or by the name of a shipped suite of that kind."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise RobustlabError(f"suite file {path} does not exist")
        return path
    candidate = suite_dir(kind) / f"{name_or_path}.toml"
    if not candidate.is_file():
        from robustlab.registry import Registry
        known: Registry[str] = Registry(f"{kind} suite")
        for n in suite_names(kind):
            known.register(n, n)
        raise RobustlabError(known.unknown_message(str(name_or_path)))
    return candidate


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RobustlabError(f"{path} is not UTF-8 text; save the suite file as UTF-8") from None
    except RecursionError:
        raise RobustlabError(f"{path} nests sections or arrays too deeply; a suite is flat: fix it there") from None
    except tomllib.TOMLDecodeError as e:
        raise RobustlabError(f"{path}: invalid TOML ({e}); fix the syntax there (a shipped suite in "
                             f"{suite_dir('corruptions')} shows the format)") from None


def key_line(path: Path, key: str) -> str:
    """'line N' of the first line that assigns `key` (for error messages), or '' if not found."""
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", line) or line.strip() == f"[{key}]":
            return f"line {i}"
    return "file"


def suite_error(path: Path, key: str, reason: str) -> RobustlabError:
    return RobustlabError(f"{path} {key_line(path, key)} ({key}): {reason}")
