"""Fixtures: a tiny CIFAR-10 folder and a tiny SDNet checkpoint (the helpers they use are in tests/helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from robustlab.checkpoints import save_checkpoint
from tests.helpers import tiny_model, write_cifar


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data")


@pytest.fixture
def sdnet_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "sdnet.pt"
    save_checkpoint(tiny_model("sdnet18"), path)
    return path
