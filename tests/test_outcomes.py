"""Per-image outcomes beside every row: what they hold, the guarantees they are written under, and refusals of
damaged or planted outcome files (one line, nothing in the run directory changed)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from robustlab.cli import main
from robustlab.data import load_dataset
from robustlab.outcomes import Outcomes, outcomes_name, read_outcomes
from robustlab.schema import cell_key
from tests.helpers import assert_error_line, outcomes_of, read_rows, snapshot

EVAL = ["eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--n", "40", "--corruptions",
        "gaussian_noise", "--severities", "5", "--attack", "fgsm", "--eps", "16/255", "--skip-diagnostics", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("outcomes") / "run"
    assert main([*EVAL, "--out", str(out)]) == 0
    return out


def test_every_row_has_its_images_outcomes(run):
    labels = load_dataset("digits").label_array(40)
    found = read_rows(run)
    assert len(found) == 3
    assert len({r["image_set"] for r in found}) == 1
    assert found[0]["image_set"]
    for row in found:
        got = outcomes_of(run, row)
        assert np.array_equal(got.index, np.arange(40))
        assert got.correct == int(row["correct"])
        assert got.lambdas is None  # a ResNet: no lambda
        if row["attack"] == "none":  # correct means the predicted class is the label
            assert np.array_equal(got.ok, got.pred == labels)
    attacked = next(r for r in found if r["attack"] != "none")
    clean = next(r for r in found if r["corruption"] == "none" and r["attack"] == "none")
    robust, correct = outcomes_of(run, attacked).ok, outcomes_of(run, clean).ok
    assert not (robust & ~correct).any(), "robust images are clean-correct ones"
    assert (run / attacked["outcomes"]).stat().st_size < 2000


def test_a_finished_run_resumes_without_work_and_keeps_its_outcomes(run, capsys):
    before = snapshot(run)
    assert main([*EVAL, "--out", str(run)]) == 0
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k.startswith("outcomes/")} == \
        {k: v for k, v in before.items() if k.startswith("outcomes/")}
    assert after["results.csv"] == before["results.csv"]


def test_outcomes_without_a_row_are_written_again(run, tmp_path):
    """A kill between the outcomes and the row: the resume trusts neither and runs that cell again."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    lines = (copy / "results.csv").read_bytes().splitlines(keepends=True)
    (copy / "results.csv").write_bytes(b"".join(lines[:-1]))
    last = read_rows(run)[-1]
    (copy / last["outcomes"]).write_bytes(b"half a file")
    assert main([*EVAL, "--out", str(copy)]) == 0
    assert [cell_key(r) for r in read_rows(copy)] == [cell_key(r) for r in read_rows(run)]
    assert np.array_equal(outcomes_of(copy, read_rows(copy)[-1]).ok, outcomes_of(run, last).ok)


def _missing(copy: Path, row: dict[str, str]) -> None:
    (copy / row["outcomes"]).unlink()


def _truncated(copy: Path, row: dict[str, str]) -> None:
    path = copy / row["outcomes"]
    path.write_bytes(path.read_bytes()[:100])


def _another_cells(copy: Path, row: dict[str, str]) -> None:
    other = next(r for r in read_rows(copy) if r["outcomes"] != row["outcomes"])
    shutil.copyfile(copy / other["outcomes"], copy / row["outcomes"])


def _a_link(copy: Path, row: dict[str, str]) -> None:
    target = copy.parent / "elsewhere.npz"
    shutil.copyfile(copy / row["outcomes"], target)
    (copy / row["outcomes"]).unlink()
    (copy / row["outcomes"]).symlink_to(target)


def _other_name(copy: Path, row: dict[str, str]) -> None:
    text = (copy / "results.csv").read_text()
    (copy / "results.csv").write_text(text.replace(row["outcomes"], "../../elsewhere.npz"))


@pytest.mark.parametrize("damage", [_missing, _truncated, _another_cells, _a_link, _other_name])
def test_a_resume_refuses_damaged_outcomes_and_changes_nothing(run, tmp_path, capsys, damage):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    row = read_rows(copy)[1]
    damage(copy, row)
    before = snapshot(copy)
    capsys.readouterr()
    assert main([*EVAL, "--out", str(copy)]) == 2
    assert_error_line(capsys.readouterr().err, "outcomes")
    assert snapshot(copy) == before


def test_a_file_name_is_fixed_by_the_cells_identity():
    key = ("m", "x", "1")
    assert outcomes_name(key) == outcomes_name(list(key)) != outcomes_name(("m", "x", "2"))
    assert outcomes_name(key).startswith("outcomes/")
    assert outcomes_name(key).endswith(".npz")


def test_packed_outcomes_round_trip_with_any_indices_and_many_classes(tmp_path):
    rng = np.random.default_rng(0)
    for index, classes in ((np.arange(5, 1005), 10), (np.sort(rng.choice(5000, 777, replace=False)), 1000),
                           (np.arange(0), 10)):
        ok = rng.random(len(index)) < 0.5
        pred = np.where(rng.random(len(index)) < 0.1, -1, rng.integers(0, classes, len(index)))
        lambdas = rng.random(len(index)).astype(np.float32)
        data = Outcomes(index=index, ok=ok, pred=pred, lambdas=lambdas).to_bytes(("k",), "set")
        path = tmp_path / outcomes_name(("k",))
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        got = read_outcomes(tmp_path, outcomes_name(("k",)), key=("k",), image_set="set", n=len(index),
                            correct=int(ok.sum()))
        assert np.array_equal(got.index, index)
        assert np.array_equal(got.ok, ok)
        assert np.array_equal(got.pred, pred)
        assert np.array_equal(got.lambdas, lambdas)
    big = Outcomes(index=np.arange(10_000), ok=rng.random(10_000) < 0.9, pred=rng.integers(0, 10, 10_000))
    assert len(big.to_bytes(("k",), "set")) < 8_000  # a 10,000-image cell is a few KB


SUITE = """
[[attack]]
name = "fgsm"
eps = "8/255"

[[attack]]
name = "pgd-linf"
eps = "8/255"
steps = 3
restarts = 1
"""


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attacked")
    (root / "two.toml").write_text(SUITE)
    for name, n in (("a", 40), ("b", 30)):
        assert main(["eval", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--n", str(n), "--attacks",
                     str(root / "two.toml"), "--skip-diagnostics", "--quiet", "--out", str(root / name)]) == 0
    return root


def test_the_worst_case_is_every_attack_survived_and_never_above_one(attacked, tmp_path, capsys):
    from robustlab.reports.report import build_report
    files = build_report([attacked / "a"], tmp_path / "rep")
    worst = files.tables["worst-case"]
    assert len(worst) == 1
    assert worst["attacks"].iloc[0] == "fgsm, pgd-linf"
    found = [r for r in read_rows(attacked / "a") if r["attack"] != "none"]
    survived = np.logical_and.reduce([outcomes_of(attacked / "a", r).ok for r in found])
    assert worst["robust"].iloc[0] == survived.sum()
    assert worst["n"].iloc[0] == 40
    assert worst["accuracy"].iloc[0] <= min(float(r["accuracy"]) for r in found)
    assert "Robust accuracy under every attack" in (tmp_path / "rep" / "report.md").read_text()
    capsys.readouterr()
    assert main(["metrics", str(attacked / "a"), "--json"]) == 0
    import json
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["worst_case"][0]["robust"] == survived.sum()


def test_runs_of_different_images_are_never_paired(attacked, tmp_path):
    from robustlab.reports.paired import OTHER_IMAGES
    from robustlab.reports.report import build_report
    files = build_report([attacked / "a", attacked / "b"], tmp_path / "rep")
    cells = files.tables["paired-cells"]
    assert set(cells["status"]) == {OTHER_IMAGES}
    assert OTHER_IMAGES in (tmp_path / "rep" / "report.md").read_text()


def test_a_run_without_outcomes_still_reports_and_says_what_is_missing(attacked, tmp_path):
    """A schema-3 run directory (before outcomes): every reader loads it; figures needing outcomes say so."""
    from robustlab.reports.paired import NEEDS_OUTCOMES
    from robustlab.reports.report import build_report
    old = tmp_path / "old"
    old.mkdir()
    with open(attacked / "a" / "results.csv", newline="") as f:
        table = list(csv.reader(f))
    keep = [i for i, c in enumerate(table[0]) if c not in ("image_set", "outcomes")]
    version = table[0].index("schema_version")
    with open(old / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([[r[i] if i != version or k == 0 else "3" for i in keep]
                                 for k, r in enumerate(table)])
    files = build_report([old], tmp_path / "rep")
    assert set(files.tables["worst-case"]["status"]) == {NEEDS_OUTCOMES}
    assert main(["metrics", str(old)]) == 0
