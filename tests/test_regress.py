"""robustlab regress: cell matching, the one-sided pooled two-proportion z-test (checked against scipy), the
max-drop margin, exit codes and bad input."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from robustlab.errors import RobustlabError
from robustlab.regress import UNPAIRED, compare, drop_test, exit_code, format_table, regress
from robustlab.schema import COLUMNS, SCHEMA_VERSION, read_results
from tests.helpers import row


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def clean(model: str = "m", n: int = 1000, correct: int = 900, **kw) -> dict:
    return row(model, mode=kw.pop("mode", "n.a."), n=n, correct=correct, **kw)


def pgd(model: str = "m", n: int = 1000, correct: int = 500, eps: float = 8 / 255, **kw) -> dict:
    return row(model, attack="pgd-linf", norm="Linf", eps=eps, steps=10, mode=kw.pop("mode", "n.a."), n=n,
               correct=correct, **kw)


def scipy_one_sided(bc: int, bn: int, cc: int, cn: int) -> tuple[float, float]:
    """Reference: the 2x2 chi-square test without continuity correction is the square of the pooled z-test;
    halving its two-sided p-value gives the one-sided one in the direction of the observed difference."""
    chi2, p, _, _ = stats.chi2_contingency([[bc, bn - bc], [cc, cn - cc]], correction=False)
    z = math.copysign(math.sqrt(chi2), bc / bn - cc / cn)
    return z, p / 2 if z > 0 else 1 - p / 2


@pytest.mark.parametrize("bc,bn,cc,cn", [(900, 1000, 850, 1000), (18, 20, 16, 20), (9500, 10000, 9450, 10000),
                                         (70, 100, 75, 100), (412, 500, 3900, 5000), (1, 3, 0, 4)])
def test_z_test_matches_scipy(bc, bn, cc, cn):
    z, p = drop_test(bc, bn, cc, cn)
    z_ref, p_ref = scipy_one_sided(bc, bn, cc, cn)
    assert z == pytest.approx(z_ref, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(p_ref, rel=1e-9, abs=1e-15)
    assert p == pytest.approx(stats.norm.sf(z), rel=1e-12)


def test_z_test_edge_cases():
    assert drop_test(10, 10, 10, 10) == (0.0, 1.0)  # no variation: no evidence of a drop
    assert drop_test(0, 10, 0, 10) == (0.0, 1.0)
    z, p = drop_test(5, 10, 0, 0)
    assert math.isnan(z)
    assert math.isnan(p)


def test_large_significant_drop_fails():
    result = compare(frame(clean(), pgd()), frame(clean(correct=850), pgd(correct=500)), max_drop=1.0)
    assert exit_code(result) == 1
    assert result.failed
    bad = result.regressions
    assert len(bad) == 1
    assert bad.iloc[0]["attack"] == "none"
    assert bad.iloc[0]["drop"] == pytest.approx(5.0)
    assert bad.iloc[0]["p_value"] == pytest.approx(scipy_one_sided(900, 1000, 850, 1000)[1])
    table = format_table(result)
    assert "FAIL" in table
    assert "pgd-linf" in table
    assert table.count("\n") >= 4


def test_large_drop_on_tiny_n_is_noise():
    result = compare(frame(clean(n=20, correct=18)), frame(clean(n=20, correct=16)), max_drop=1.0)
    cell = result.cells.iloc[0]
    assert cell["drop"] == pytest.approx(10.0)
    assert cell["p_value"] > 0.05
    assert exit_code(result) == 0
    assert cell["verdict"] == "ok (drop within noise)"


def test_small_significant_drop_under_max_drop_passes():
    result = compare(frame(clean(n=100000, correct=95000)), frame(clean(n=100000, correct=94500)), max_drop=1.0)
    cell = result.cells.iloc[0]
    assert cell["drop"] == pytest.approx(0.5)
    assert cell["p_value"] < 1e-6
    assert exit_code(result) == 0
    assert cell["verdict"] == "ok (drop within max-drop)"
    # the same drop fails with a tighter margin
    assert exit_code(compare(frame(clean(n=100000, correct=95000)), frame(clean(n=100000, correct=94500)),
                             max_drop=0.25)) == 1


def test_improvement_and_boundary_pass():
    assert exit_code(compare(frame(clean(correct=800)), frame(clean(correct=900)))) == 0
    # a drop of exactly max_drop points is not "larger than" it
    assert exit_code(compare(frame(clean(n=100000, correct=95000)), frame(clean(n=100000, correct=94000)),
                             max_drop=1.0)) == 0


def test_alpha_is_respected():
    base, cur = frame(clean(n=400, correct=360)), frame(clean(n=400, correct=343))  # p about 0.033
    p = compare(base, cur).cells.iloc[0]["p_value"]
    assert 0.01 < p < 0.05
    assert exit_code(compare(base, cur, alpha=0.05)) == 1
    assert exit_code(compare(base, cur, alpha=0.01)) == 0


def test_matching_by_cell_key():
    base = frame(clean(), pgd(eps=2 / 255, correct=700), pgd(eps=8 / 255, correct=300),
                 clean("s", mode="fixed", lam=0.1), clean("s", mode="adaptive-set", lam=0.2))
    cur = frame(pgd(eps=8 / 255, correct=300), clean("s", mode="adaptive-set", lam=0.35),  # adaptive: any lambda
                clean("s", mode="fixed", lam=0.1), pgd(eps=2 / 255, correct=700), clean(),
                clean("s", mode="fixed", lam=0.2), pgd("other"))  # new cells are not tested
    result = compare(base, cur)
    assert len(result.cells) == 5
    assert result.new_cells == 2
    assert exit_code(result) == 0
    assert "2 new cells" in format_table(result)
    with pytest.raises(RobustlabError, match="cell missing"):
        compare(frame(clean("s", mode="fixed", lam=0.1)), frame(clean("s", mode="fixed", lam=0.2)))


def test_missing_cell_raises():
    with pytest.raises(RobustlabError, match=r"cell missing from the current results: model=m.*attack=pgd-linf"):
        compare(frame(clean(), pgd()), frame(clean()))


def test_schema_mismatch_raises():
    base = frame(clean())
    with pytest.raises(RobustlabError, match="different columns.*only in baseline: flags"):
        compare(base, base.drop(columns="flags"))
    newer = base.assign(schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(RobustlabError, match="schema_version"):
        compare(base, newer)
    with pytest.raises(RobustlabError, match="lack the columns"):
        compare(base.drop(columns="correct"), base.drop(columns="correct"))


def test_bad_arguments_and_duplicates_raise():
    base = frame(clean())
    with pytest.raises(RobustlabError, match="alpha"):
        compare(base, base, alpha=1.5)
    with pytest.raises(RobustlabError, match="max_drop"):
        compare(base, base, max_drop=-1)
    with pytest.raises(RobustlabError, match="repeated cells"):
        compare(base, frame(clean(), clean()))


def test_csv_round_trip_and_exit_code(tmp_path):
    base_rows = [clean(), pgd(), clean("s", mode="fixed", lam=0.1, corruption="fog", severity=3),
                 row("t", attack="square", source="m", norm="Linf", eps=8 / 255, steps=100, mode="n.a.")]
    frame(*base_rows).to_csv(tmp_path / "baseline.csv", index=False)
    run = tmp_path / "run"
    run.mkdir()
    frame(*base_rows).to_csv(run / "results.csv", index=False)
    out = io.StringIO()
    assert regress(tmp_path / "baseline.csv", run, stream=out) == 0  # a run directory works too
    text = out.getvalue()
    assert text.count(" ok") == 4
    assert "PASS: 4 cells compared, 0 regressed" in text
    assert "from m" in text
    assert "fog s3" in text
    worse = [clean(correct=800), *base_rows[1:]]
    frame(*worse).to_csv(tmp_path / "current.csv", index=False)
    assert regress(tmp_path / "baseline.csv", tmp_path / "current.csv", stream=io.StringIO()) == 1
    with pytest.raises(RobustlabError, match="not a results.csv"):
        read_results(tmp_path / "nope.csv")


def test_json_gives_the_key_columns_as_numbers(tmp_path):
    rows = [clean(), pgd(eps=8 / 255), clean("s", mode="fixed", lam=0.1, corruption="fog", severity=3),
            clean("s", mode="adaptive-set", lam=0.3)]
    frame(*rows).to_csv(tmp_path / "baseline.csv", index=False)
    result = compare(read_results(tmp_path / "baseline.csv"), read_results(tmp_path / "baseline.csv"))
    cells = {(c["model"], c["attack"], c["lambda_mode"]): c for c in json.loads(result.to_json())}
    attacked, fog, adaptive = cells["m", "pgd-linf", "n.a."], cells["s", "none", "fixed"], cells["s", "none",
                                                                                                 "adaptive-set"]
    assert attacked["eps"] == pytest.approx(8 / 255, rel=1e-12)
    assert attacked["steps"] == 10
    assert fog["severity"] == 3
    assert fog["lambda"] == 0.1
    assert fog["eps"] is None
    assert adaptive["lambda"] is None, "an adaptive cell is matched without its lambda"
    assert cells["m", "none", "n.a."]["current_correct"] == 900
    assert cells["m", "none", "n.a."]["verdict"] == "ok"


def test_the_paired_gate_sees_a_real_drop_the_unpaired_test_misses_and_no_false_alarm(tmp_path):
    """The shipped Fashion-MNIST ResNet-18 against itself with the 'shirt' logit lowered by 1 (a deliberate small
    degradation: about 1.4 points on the first 1,000 test images, nearly all of it losses): the exact McNemar test
    on the same images fails the cell, the unpaired z-test on the same counts does not; a re-run of the unchanged
    model passes paired (p = 1)."""
    import robustlab
    from robustlab.checkpoints import save_checkpoint
    from robustlab.cli import main
    from robustlab.regress import PAIRED
    from robustlab.schema import read_results
    model = robustlab.load_model("zoo:resnet18-fashion")
    with torch.no_grad():
        model.net.linear.bias[6] -= 1.0
    (tmp_path / "ckpt").mkdir()
    save_checkpoint(model, tmp_path / "ckpt" / "resnet18-fashion.pt")
    runs = {}
    for name, ckpt in (("base", "zoo:resnet18-fashion"), ("again", "zoo:resnet18-fashion"),
                       ("worse", str(tmp_path / "ckpt" / "resnet18-fashion.pt"))):
        assert main(["eval", "--ckpt", ckpt, "--dataset", "fashion-mnist", "--n", "1000", "--quiet",
                     "--out", str(tmp_path / name)]) == 0
        runs[name] = read_results(tmp_path / name)
    paired = compare(runs["base"], runs["worse"]).cells.iloc[0]
    assert paired["test"] == PAIRED
    assert paired["regression"]
    assert 1.0 < paired["drop"] < 2.0
    unpaired = compare(runs["base"].assign(outcomes=""), runs["worse"].assign(outcomes="")).cells.iloc[0]
    assert unpaired["test"] == UNPAIRED
    assert not unpaired["regression"]
    assert unpaired["p_value"] > 0.05
    assert unpaired["drop"] == paired["drop"]
    rerun = compare(runs["base"], runs["again"]).cells.iloc[0]
    assert rerun["test"] == PAIRED
    assert rerun["p_value"] == 1.0
    assert not rerun["regression"]


def test_holm_correction_adjusts_the_cells_p_values():
    base = frame(*[clean(corruption=f"c{i}", severity=1, n=100, correct=90) for i in range(4)])
    cur = frame(*[clean(corruption=f"c{i}", severity=1, n=100, correct=c) for i, c in enumerate((70, 80, 85, 88))])
    plain, holm = compare(base, cur), compare(base, cur, correction="holm")
    assert holm.cells["test"].eq(UNPAIRED).all()
    order = plain.cells["p_value"].sort_values().index
    expected = np.maximum.accumulate([min(1.0, (4 - i) * plain.cells["p_value"][j]) for i, j in enumerate(order)])
    assert holm.cells["p_value"][order].tolist() == pytest.approx(list(expected))
    with pytest.raises(RobustlabError, match="unknown correction 'bonferroni'; pass one of none, holm"):
        compare(base, cur, correction="bonferroni")
