"""Workarounds for broken PyPI releases, in this one place (never by editing site-packages).

- robustbench 1.1.1 does `from autoattack import AutoAttack`, but its dependency pyautoattack installs
  the package as `pyautoattack`: alias the module and its submodules.
- robustbench 1.1.1 and imagecorruptions 1.1.2 import `pkg_resources`, which setuptools >= 81 no longer
  ships; both only call `resource_filename(package, path)`, provided here by importlib.resources.
Call `patch_third_party()` before importing either package.
"""
from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import sys
import types
from pathlib import Path

_PYAUTOATTACK_SUBMODULES = ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections", "fab_pt",
                            "other_utils", "square", "state")


def _resource_filename(package: str, path: str) -> str:
    # callers pass a package or a module name (imagecorruptions passes its module `imagecorruptions.corruptions`)
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations is None and spec.origin:
        return str(Path(spec.origin).parent / path)
    return str(importlib.resources.files(package).joinpath(path))


def patch_third_party() -> None:
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None \
            and importlib.util.find_spec("pyautoattack") is not None:
        pkg = importlib.import_module("pyautoattack")
        sys.modules.setdefault("autoattack", pkg)
        for name in _PYAUTOATTACK_SUBMODULES:
            sys.modules.setdefault(f"autoattack.{name}", importlib.import_module(f"pyautoattack.{name}"))
