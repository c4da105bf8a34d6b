"""The worst-case mode (`eval --cascade`): per-image random streams make an image's adversarial example independent
of its batch, so attacking only the undecided images gives the worst case of attacking them all."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from robustlab.attacks import attack_batch, make_spec
from robustlab.attacks.draws import ImageDraws
from robustlab.cascade import Cascade, cascade_order, clean_decides, skips_images
from robustlab.cells import Cell
from robustlab.cli import main
from robustlab.config import EvalConfig
from robustlab.errors import RobustlabError
from robustlab.evaluation import evaluate
from robustlab.outcomes import Outcomes, read_outcomes, write_outcomes
from robustlab.reports.paired import worst_case
from robustlab.reports.runs import load_runs, outcome_loader
from robustlab.schema import CASCADE_FLAG, LambdaMode
from tests.helpers import outcomes_of, read_rows


def _model(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, classes)).eval()


@pytest.mark.parametrize("spec", [make_spec("pgd-linf", eps="8/255", steps=3),
                                  make_spec("pgd-linf", eps="8/255", steps=2, restarts=3),
                                  make_spec("square", eps="8/255", queries=30),
                                  make_spec("fgsm", eps="8/255"),
                                  make_spec("apgd-ce", eps="4/255", steps=5, restarts=2),
                                  make_spec("apgd-t", eps="4/255", steps=3),
                                  make_spec("fab-t", eps="4/255", steps=5),
                                  make_spec("square-aa", eps="8/255", queries=30),
                                  make_spec("autoattack", eps="2/255")], ids=lambda s: f"{s.name}-{s.restarts}")
def test_an_image_gets_the_same_adversarial_example_in_any_batch(spec):
    model = _model(4 if spec.name == "autoattack" else 10)  # 3 target classes keep AutoAttack cheap
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    full = attack_batch(model, x, y, spec, seed=5)
    keep = torch.tensor([i % 3 != 1 for i in range(16)])
    part = attack_batch(model, x[keep], y[keep], spec, seed=5, offsets=keep.nonzero().flatten().tolist())
    assert not torch.equal(full.adversarial, x), "the attack moved the images"
    assert torch.equal(full.adversarial[keep], part.adversarial)
    assert torch.equal(full.robust[keep], part.robust)


def test_pgd_l2_is_batch_independent_to_rounding():
    """PGD-L2 normalizes a gradient of the batch-mean loss: the 1/n factor rounds differently per batch size."""
    model = _model()
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = make_spec("pgd-l2", eps=0.5, steps=3)
    full = attack_batch(model, x, y, spec, seed=5)
    keep = torch.arange(16) >= 5
    part = attack_batch(model, x[keep], y[keep], spec, seed=5, offsets=list(range(5, 16)))
    torch.testing.assert_close(full.adversarial[keep], part.adversarial, rtol=0, atol=1e-6)


def test_each_image_draws_its_own_stream_and_others_are_left_to_the_global_one():
    draws = ImageDraws.seeded([1, 2, 3])
    with draws:
        starts = torch.empty(3, 1, 2, 2).uniform_(-1, 1)
        shared = torch.rand(3, 1, 1)  # not one row per image: Square's square, shared by the batch
    with ImageDraws.seeded([2]):
        alone = torch.empty(1, 1, 2, 2).uniform_(-1, 1)
    assert torch.equal(starts[1], alone[0])
    assert not torch.equal(starts[0], starts[1])
    torch.manual_seed(0)
    with ImageDraws.seeded([1, 2, 3]):
        torch.rand(3, 1, 1)
    following = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(3, 1, 1)
    assert torch.equal(following, torch.rand(1))
    assert shared.shape == (3, 1, 1)


def test_only_batch_independent_attacks_skip_images():
    assert skips_images(make_spec("pgd-linf", eps=0.1), LambdaMode.FIXED)
    assert skips_images(make_spec("square", eps=0.1, norm="Linf"), LambdaMode.ADAPTIVE_IMAGE)
    assert not skips_images(make_spec("square", eps=0.1, norm="L2"), LambdaMode.FIXED)
    assert not skips_images(make_spec("square", eps=0.1, restarts=2), LambdaMode.FIXED)
    assert skips_images(make_spec("apgd-t", eps=0.1), LambdaMode.FIXED)  # its runs draw per image (_apgd_runs)
    assert skips_images(make_spec("autoattack", eps=0.1), LambdaMode.FIXED)
    assert not skips_images(make_spec("autoattack", eps=0.5, norm="L2"), LambdaMode.FIXED)  # L2 Square
    assert not skips_images(make_spec("pgd-linf", eps=0.1), LambdaMode.ADAPTIVE_SET)  # lambda chosen per batch


def test_attacks_run_by_eps_then_cheap_first():
    pgd8, pgd2 = make_spec("pgd-linf", eps="8/255"), make_spec("pgd-linf", eps="2/255")
    square2, aa2 = make_spec("square", eps="2/255"), make_spec("autoattack", eps="2/255")
    cells = [Cell(attack=aa2), Cell(attack=square2), Cell(attack=pgd8), Cell(attack=pgd2, source="src"),
             Cell(), Cell(attack=pgd2), Cell(attack=make_spec("pgd-l2", eps=0.5)), Cell("fog", 1)]
    got = [(c.attack.name, c.attack.eps, c.source) if c.attack else c.corruption for c in cascade_order(cells)]
    assert got == ["none", "fog", ("pgd-l2", 0.5, ""), ("pgd-linf", 2 / 255, ""), ("pgd-linf", 2 / 255, "src"),
                   ("square", 2 / 255, ""), ("autoattack", 2 / 255, ""), ("pgd-linf", 8 / 255, "")]


def test_an_image_broken_at_a_smaller_eps_is_broken_at_every_larger_one():
    cascade = Cascade()
    cascade.record("m", "Linf", 0.02, Outcomes(index=np.arange(4), ok=np.array([True, False, True, True]),
                                               pred=np.zeros(4, np.int64)))
    assert cascade.broken("m", "Linf", 0.01, np.arange(4)).tolist() == [False] * 4
    assert cascade.broken("m", "Linf", 0.03, np.arange(4)).tolist() == [False, True, False, False]
    assert cascade.broken("m", "L2", 0.03, np.arange(4)).tolist() == [False] * 4
    assert cascade.broken("other", "Linf", 0.03, np.arange(4)).tolist() == [False] * 4
    cascade.record_clean("m", Outcomes(index=np.arange(4), ok=np.array([True, True, True, False]),
                                       pred=np.zeros(4, np.int64)))
    assert cascade.broken("m", "L2", 0.001, np.arange(4)).tolist() == [False, False, False, True]


def test_only_a_clean_cell_not_under_per_set_selection_decides():
    assert clean_decides(Cell(), LambdaMode.FIXED)
    assert clean_decides(Cell(), LambdaMode.ADAPTIVE_IMAGE)
    assert not clean_decides(Cell(), LambdaMode.ADAPTIVE_SET)
    assert not clean_decides(Cell("fog", 1), LambdaMode.FIXED)


def test_the_worst_case_at_eps_covers_the_attacks_at_smaller_eps():
    base = {"dataset": "d", "corruption": "none", "severity": 0, "attack_source": "", "norm": "Linf",
            "image_set": "s", "steps": 10, "queries": 0, "alpha": np.nan, "restarts": 1, "attack_config": "c",
            "variant": "m", "attack": "pgd-linf"}
    small = np.array([True, False, True, True])
    large = np.array([True, True, False, True])  # image 1 survived the larger eps, not the smaller one
    df = pd.DataFrame([{**base, "eps": 0.01, "accuracy": small.mean(), "key": 0},
                       {**base, "eps": 0.03, "accuracy": large.mean(), "key": 1}])
    store = [Outcomes(index=np.arange(4), ok=ok, pred=np.zeros(4, np.int64)) for ok in (small, large)]
    table = worst_case(df, lambda r: store[r["key"]]).set_index("eps")
    assert table.loc[0.01, "robust"] == 3
    assert table.loc[0.03, "robust"] == 2
    assert table.loc[0.03, "attacks"] == "pgd-linf, pgd-linf at 0.01"


def test_cascade_needs_attacks():
    with pytest.raises(RobustlabError, match="--cascade .* has none"):
        EvalConfig(ckpts=("zoo:resnet18-digits",), dataset="digits", cascade=True)


def _worst(run: Path) -> pd.DataFrame:
    return worst_case(load_runs([run])[0], outcome_loader())[["variant", "norm", "eps", "n", "robust"]]


def _per_image(run: Path) -> dict[tuple[str, float], np.ndarray]:
    """Per model and eps: which images survive every attack at that eps or a smaller one (from the outcomes)."""
    attacked = [r for r in read_rows(run) if r["attack"] != "none"]
    return {(m, e): np.logical_and.reduce([outcomes_of(run, r).ok for r in attacked
                                           if r["model"] == m and float(r["eps"]) <= e])
            for m, e in {(r["model"], float(r["eps"])) for r in attacked}}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped SDNet-18 and RDSN under the demo's kind of attack set (PGD at two eps, then Square; cut down
    from the demo's four eps and budgets to keep the test short), every attack on every image and in the
    worst-case mode."""
    root = tmp_path_factory.mktemp("cascade")
    attacks = (*(make_spec("pgd-linf", eps=e, steps=5) for e in ("2/255", "4/255")),
               make_spec("square", eps="4/255", queries=60))
    config = EvalConfig(ckpts=("zoo:sdnet18-fashion", "zoo:rdsn-fashion"), dataset="fashion-mnist", n=64,
                        batch_size=32, attacks=attacks, diagnostics=False, quiet=True, out=str(root / "full"))
    evaluate(config)
    evaluate(dataclasses.replace(config, cascade=True, out=str(root / "cascade")))
    return root / "full", root / "cascade"


def test_the_worst_case_mode_gives_the_worst_case_of_every_attack_on_every_image(demo_runs):
    full, cascade = demo_runs
    expected, got = _worst(full), _worst(cascade)
    assert len(expected) == 4
    assert expected["robust"].nunique() > 2  # two models, two eps: figures that differ
    pd.testing.assert_frame_equal(expected.reset_index(drop=True), got.reset_index(drop=True))
    per_full, per_cascade = _per_image(full), _per_image(cascade)
    assert per_full.keys() == per_cascade.keys()
    for key in per_full:
        assert np.array_equal(per_full[key], per_cascade[key]), key


def test_a_row_that_skipped_images_says_so_and_counts_them_broken(demo_runs):
    _, cascade = demo_runs
    attacked = [r for r in read_rows(cascade) if r["attack"] != "none"]
    skipped = [r for r in attacked if CASCADE_FLAG.format(n="") in r["flags"]]
    assert skipped, "the larger eps and Square skipped images"
    for row in skipped:
        out = outcomes_of(cascade, row)
        n = int(re.search(CASCADE_FLAG.format(n=r"(\d+)"), row["flags"]).group(1))
        assert out.attacked is not None
        assert int(out.attacked.sum()) == n < int(row["n"])
        assert not out.ok[~out.attacked].any()
        assert (out.pred[~out.attacked] == -1).all()


def test_the_worst_case_mode_saves_attack_time(demo_runs):
    full, cascade = demo_runs

    def attack_seconds(run: Path) -> float:
        return sum(float(r["seconds"]) for r in read_rows(run) if r["attack"] != "none")
    assert attack_seconds(cascade) < attack_seconds(full)


def test_a_resumed_worst_case_run_goes_on_from_the_cells_it_had(tmp_path):
    """Killed after its first attack rows, a worst-case run resumes with what they broke: the same rows."""
    out = tmp_path / "run"
    command = ["eval", "--ckpt", "zoo:sdnet18-fashion", "--dataset", "fashion-mnist", "--n", "96", "--batch-size",
               "32", "--attacks", "fashion-pgd", "--cascade", "--skip-diagnostics", "--quiet", "--out", str(out)]
    assert main(command) == 0
    whole = {(r["attack"], r["eps"]): (r["correct"], r["flags"]) for r in read_rows(out)}
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:4]))  # header, clean, PGD at 1/255 and 2/255
    assert main(command) == 0
    assert {(r["attack"], r["eps"]): (r["correct"], r["flags"]) for r in read_rows(out)} == whole
    last = read_rows(out)[4]
    assert len(read_rows(out)) == 5
    assert "cascade_attacked_96" not in whole[last["attack"], last["eps"]][1]


def test_an_outcomes_file_that_calls_a_skipped_image_robust_is_refused(tmp_path):
    key = ("m", "cell")
    planted = Outcomes(index=np.arange(3), ok=np.array([True, True, False]), pred=np.zeros(3, np.int64),
                       attacked=np.array([True, False, True]))
    name = write_outcomes(tmp_path, key, "set", planted)
    with pytest.raises(RobustlabError, match="counts an image it did not attack as robust"):
        read_outcomes(tmp_path, name, key=key, image_set="set", n=3, correct=2)
    honest = Outcomes(index=np.arange(3), ok=np.array([True, False, False]), pred=np.array([0, -1, 1]),
                      attacked=np.array([True, False, True]))
    read = read_outcomes(tmp_path, write_outcomes(tmp_path, key, "set", honest), key=key, image_set="set", n=3,
                         correct=1)
    assert read.attacked.tolist() == [True, False, True]
