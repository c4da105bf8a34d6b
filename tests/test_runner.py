"""run_cells on its own: a fake image set, an in-memory store, a tiny model; no files, no CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robustlab.attacks import make_spec
from robustlab.cells import Cell, LambdaSetting, ModelPlan
from robustlab.counting import RunInfo
from robustlab.data import ArrayImageSet
from robustlab.outcomes import Outcomes
from robustlab.progress import progress_bars
from robustlab.runner import run_cells
from robustlab.schema import LambdaMode, Record, cell_key
from tests.helpers import tiny_model


class MemoryStore:
    def __init__(self) -> None:
        self.done: set[tuple[str, ...]] = set()
        self.records: list[Record] = []
        self.outcomes: list[Outcomes | None] = []

    def append(self, record: Record, outcomes: Outcomes | None = None) -> Record:
        self.records.append(record)
        self.outcomes.append(outcomes)
        self.done.add(cell_key(record.row()))
        return record


def fake_set(n: int = 12) -> ArrayImageSet:
    rng = np.random.default_rng(0)
    return ArrayImageSet(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), name="fake",
                         split="test", num_classes=10)


def test_run_cells_counts_each_cell_once_and_skips_what_the_store_holds():
    data = fake_set()
    model = tiny_model("sdnet18")
    plan = ModelPlan(model, "sha", [LambdaSetting(LambdaMode.FIXED, 0.1), LambdaSetting(LambdaMode.FIXED, 0.5)])
    cells = [Cell(), Cell(attack=make_spec("pgd-linf", eps="2/255", steps=1))]
    info = RunInfo(seed=3, batch_size=5, device=torch.device("cpu"), diagnostics=False)
    store = MemoryStore()
    records = run_cells([plan], cells, lambda cell: data, info, store, progress_bars(True))
    assert len(records) == len(store.records) == 4
    for record, outcomes in zip(store.records, store.outcomes):  # every image's outcome, adding up to the count
        assert np.array_equal(outcomes.index, np.arange(12))
        assert outcomes.correct == record.correct
    clean = [r for r in records if r.attack == "none"]
    with torch.no_grad():
        model.net.layer0[0].lmbda = 0.1
        want = int((model(torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255).argmax(1)
                    == torch.from_numpy(data.labels)).sum())
    assert clean[0].correct == want
    assert clean[0].n == 12
    assert clean[0].lmbda == 0.1
    attacked = [r for r in records if r.attack == "pgd-linf"]
    assert all(a.correct <= c.correct for a, c in zip(attacked, clean))
    assert attacked[0].batch_size == 5
    assert attacked[0].steps == 1
    assert attacked[0].flags_model == model.name
    again = run_cells([plan], cells, lambda cell: data, info, store, progress_bars(True))
    assert again == [], "cells already in the store are not run again"
    assert len(store.records) == 4, "cells already in the store are not run again"


def test_adaptive_outcomes_hold_each_images_lambda():
    """Per image, the outcome file keeps the lambda Algorithm 1 chose for that image (their mean is the row's
    lambda); per set, every image carries the set's lambda."""
    from tests.helpers import make_calibration
    data = fake_set()
    model = tiny_model("sdnet18")
    grid = [0.05, 0.1, 0.2, 0.4]
    calib = make_calibration(grid, a=0.0, b=0.17)  # the line is flat at 0.17: every image picks 0.2
    settings = [LambdaSetting(LambdaMode.ADAPTIVE_IMAGE, calibration=calib),
                LambdaSetting(LambdaMode.ADAPTIVE_SET, calibration=calib)]
    info = RunInfo(seed=0, batch_size=5, device=torch.device("cpu"), diagnostics=False)
    store = MemoryStore()
    run_cells([ModelPlan(model, "sha", settings)], [Cell()], lambda cell: data, info, store, progress_bars(True))
    per_image, per_set = store.outcomes
    assert per_image.lambdas is not None
    assert len(per_image.lambdas) == 12
    assert set(np.round(per_image.lambdas.astype(float), 6).tolist()) == {0.2}
    assert float(per_image.lambdas.mean()) == pytest.approx(store.records[0].lmbda, rel=1e-6)
    assert per_set.lambdas is None or len(set(per_set.lambdas.tolist())) == 1
