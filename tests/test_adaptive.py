"""Algorithm 1: the fit, the selection rule, per-image lambda, calibration files, and the CLI paths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import robustlab
from robustlab.adaptive import (
    AdaptiveLambda,
    Calibration,
    Fit,
    best_lambdas,
    default_grid,
    fit_line,
    load_calibration,
    parse_grid,
    residual_grid,
    select_for_set,
)
from robustlab.cli import main
from robustlab.data import to_pixels
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.models import csc_layer
from tests.conftest import tiny_model


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def synthetic_sweep(a: float, b: float) -> list[dict]:
    """A sweep whose best lambda at residual r is exactly a * r + b, on a grid that contains those lambdas."""
    rows = []
    for level, r in [(0.1, 1.0), (0.2, 2.0), (0.3, 3.0), (0.4, 4.0)]:
        best = a * r + b
        for lam in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            acc = 0.9 - abs(lam - best)  # peaked at the best lambda
            rows.append({"level": level, "lambda": lam, "accuracy": round(acc, 6),
                         "residual_mean": r if abs(lam - best) < 1e-9 else r + lam, "n": 100})
    return rows


def test_fit_recovers_a_known_line():
    points = best_lambdas(synthetic_sweep(0.1, 0.1))
    assert [p["lambda"] for p in points] == pytest.approx([0.2, 0.3, 0.4, 0.5])
    fit = fit_line([p["residual"] for p in points], [p["lambda"] for p in points])
    assert fit.a == pytest.approx(0.1) and fit.b == pytest.approx(0.1) and fit.r2 == pytest.approx(1.0)


def test_ties_take_the_smaller_lambda_and_constant_lambda_is_no_line():
    rows = [{"level": 0.1, "lambda": lam, "accuracy": 1.0, "residual_mean": 5.0 + lam, "n": 10}
            for lam in (0.3, 0.1, 0.2)]
    assert best_lambdas(rows)[0]["lambda"] == 0.1
    fit = fit_line([1.0, 2.0, 3.0], [0.1, 0.1, 0.1])
    assert fit.a == 0 and fit.b == pytest.approx(0.1)


def _calib(grid, a, b, sha="x" * 64) -> Calibration:
    return Calibration(checkpoint_sha256=sha, arch="sdnet18", layer=0, noise="gaussian", grid=list(grid),
                       levels=[0.1], sweep=[{"level": 0.1, "lambda": grid[0], "accuracy": 1.0, "residual_mean": 1.0,
                                             "n": 1}], points=[{"level": 0.1, "lambda": grid[0], "residual": 1.0,
                                                                 "accuracy": 1.0}],
                       fit=Fit(a, b, 1.0), calibration_split="digits/train", n=1, seed=0)


def test_selection_picks_the_self_consistent_grid_point():
    calib = _calib([0.1, 0.2, 0.3, 0.4], a=0.1, b=0.0)
    # residual rises with lambda; lambda = 0.1 r is met exactly at lambda 0.3 (r = 3)
    residuals = torch.tensor([[2.0], [2.5], [3.0], [3.2]])
    assert float(calib.select(residuals)[0]) == pytest.approx(0.3)
    two = torch.tensor([[2.0, 0.0], [2.5, 1.0], [3.0, 1.5], [3.2, 4.0]])
    assert calib.select(two).tolist() == pytest.approx([0.3, 0.4])
    tie = torch.tensor([[0.0], [1.0], [9.0], [9.0]])  # gaps 0.1, 0.1, ...: the smaller lambda wins
    assert float(calib.select(tie)[0]) == pytest.approx(0.1)


def test_per_sample_lambda_equals_scalar_lambda_image_by_image():
    model = tiny_model("sdnet18")
    x = torch.rand(3, 3, 32, 32)
    lambdas = torch.tensor([0.1, 0.5, 1.0])
    with torch.no_grad():
        robustlab.set_lambda(model, lambdas)
        together = model(x)
        res_together = robustlab.last_residual(model).clone()
        for i, lam in enumerate(lambdas.tolist()):
            robustlab.set_lambda(model, lam)
            assert torch.allclose(model(x[i:i + 1]), together[i:i + 1], atol=1e-5)
            assert torch.allclose(robustlab.last_residual(model), res_together[i:i + 1], rtol=1e-5)


def test_residual_grid_runs_only_the_csc_layer_and_matches_full_forwards():
    model = tiny_model("sdnet18")
    x = torch.rand(4, 3, 32, 32)
    grid = [0.1, 0.3]
    table = residual_grid(model, x, grid)
    for k, lam in enumerate(grid):
        robustlab.set_lambda(model, lam)
        with torch.no_grad():
            model(x)
        assert torch.equal(table[k], robustlab.last_residual(model))
    assert csc_layer(model).lmbda == 0.3  # set by the loop above, not by residual_grid


def test_fast_selection_picks_what_the_whole_network_per_lambda_picks():
    model = tiny_model("sdnet18")
    contrast = torch.linspace(0.2, 1.0, 8).view(-1, 1, 1, 1)  # residuals, and so the lambdas, differ
    images = (torch.rand(8, 3, 32, 32) * contrast * 255).to(torch.uint8)
    x = to_pixels(images, torch.device("cpu"))
    grid = list(default_grid(0.1, n=7))
    reference = []
    with torch.no_grad():
        for lam in grid:
            robustlab.set_lambda(model, lam)
            model(x)
            reference.append(robustlab.last_residual(model).clone())
    reference = torch.stack(reference)
    robustlab.set_lambda(model, 0.1)
    calib = _calib(grid, a=grid[3] / float(reference[3].median()), b=0.0)  # consistent mid-grid
    per_image = AdaptiveLambda(model, calib, per_image=True)
    with torch.no_grad():
        per_image(x)
    expected = calib.select(reference)
    assert len(set(expected.tolist())) > 1, "the images must pick different lambdas for the test to mean much"
    assert torch.equal(per_image.last_lambdas, expected)
    batches = [(images[:5], None), (images[5:], None)]
    chosen = select_for_set(model, batches, calib, torch.device("cpu"))
    assert chosen == float(calib.select(reference.double().mean(dim=1, keepdim=True))[0])


def test_per_image_selection_over_identical_images_equals_per_set():
    model = tiny_model("sdnet18")
    x = torch.rand(1, 3, 32, 32).repeat(5, 1, 1, 1)
    r = residual_grid(model, x[:1], [0.1, 0.2, 0.4])
    calib = _calib([0.1, 0.2, 0.4], a=0.2 / float(r[1, 0]), b=0.0)  # consistent at lambda 0.2
    per_image = AdaptiveLambda(model, calib, per_image=True)
    per_set = AdaptiveLambda(model, calib, per_image=False)
    with torch.no_grad():
        a, b = per_image(x), per_set(x)
    assert torch.equal(per_image.last_lambdas, per_set.last_lambdas)
    assert per_image.last_lambdas.tolist() == pytest.approx([0.2] * 5)
    assert torch.allclose(a, b)


def test_adaptive_model_passes_gradients_straight_through_selection():
    model = tiny_model("sdnet18")
    calib = _calib([0.1, 0.2], a=0.0, b=0.2)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    AdaptiveLambda(model, calib, per_image=True)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert csc_layer(model).lmbda == 0.1, "the model's own lambda is restored after the forward"


def test_calibration_round_trip_and_rejections(tmp_path):
    calib = _calib([0.1, 0.2], a=0.05, b=0.1, sha="a" * 64)
    path = tmp_path / "c.json"
    calib.save(path)
    again = load_calibration(path, sha256="a" * 64)
    assert again == calib
    with pytest.raises(RobustlabError, match="calibrated for checkpoint aaaaaaaaaaaa"):
        load_calibration(path, sha256="b" * 64)
    data = json.loads(path.read_text())
    for mutate, match in [(lambda d: d.update(sweep=[]), "empty sweep"),
                          (lambda d: d.pop("fit"), "malformed"),
                          (lambda d: d.update(format="other"), "not a robustlab calibration")]:
        bad = json.loads(json.dumps(data))
        mutate(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(RobustlabError, match=match):
            load_calibration(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RobustlabError, match="invalid JSON"):
        load_calibration(tmp_path / "broken.json")


def test_grids():
    assert parse_grid("official", 0.1) == pytest.approx([0.1 * k for k in range(1, 15)])
    g = default_grid(0.1)
    assert len(g) == 14 and g[0] == pytest.approx(0.1) and g[-1] == pytest.approx(0.3)
    assert parse_grid("0.1:0.4:4", 0.1) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(RobustlabError, match="bad lambda grid"):
        parse_grid("0.1:x", 0.1)


def test_calibrate_then_evaluate_fixed_and_adaptive(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    calib_path = tmp_path / "calib.json"
    assert run_cli("calibrate", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--n", 24, "--levels",
                   "0.1,0.4", "--lambdas", "geom:0.1:0.3:3", "--out", calib_path, "--quiet") == 0
    calib = load_calibration(calib_path)
    assert calib.calibration_split == "digits/train" and len(calib.sweep) == 6 and len(calib.points) == 2
    assert (tmp_path / "calib.png").is_file() and (tmp_path / "calib.svg").is_file()
    for flag in ([], ["--per-image"], ["--select-n", 8]):
        out = tmp_path / f"run{len(flag)}"
        assert run_cli("eval", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--n", 24, "--corruptions",
                       "gaussian_noise", "--severities", "5", "--adaptive-lambda", calib_path, *flag, "--out", out,
                       "--quiet") == 0
        df = pd.read_csv(out / "results.csv")
        mode = "adaptive-image" if flag == ["--per-image"] else "adaptive-set"
        assert list(df["lambda_mode"]) == ["fixed", mode, "fixed", mode]
        assert df["lambda"].between(0.1 - 1e-9, 0.3 + 1e-9).all()
        assert df[df["lambda_mode"] == mode]["lambda_std"].notna().all() == (mode == "adaptive-image")
        subsampled = "lambda_from_first_8" if "--select-n" in flag else ""
        assert list(df["flags"].astype("string").fillna("")) == ["", subsampled] * 2
    assert run_cli("eval", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--adaptive-lambda", calib_path,
                   "--per-image", "--select-n", 8, "--out", tmp_path / "refused") == 2
    out = tmp_path / "sweep"
    assert run_cli("eval", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--n", 24, "--lambda-sweep",
                   "0.1,0.5,2.0", "--out", out, "--quiet") == 0
    df = pd.read_csv(out / "results.csv")
    assert list(df["lambda"]) == pytest.approx([0.1, 0.5, 2.0])
    assert df["residual_mean"].is_monotonic_increasing


def test_lambda_options_refused_without_csc_or_with_a_foreign_calibration(tmp_path, capsys):
    calib_path = tmp_path / "c.json"
    _calib([0.1], a=0.0, b=0.1, sha="f" * 64).save(calib_path)
    assert run_cli("eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--lambda", "0.3",
                   "--out", tmp_path / "a") == 2
    assert "has no CSC layer" in capsys.readouterr().err
    assert run_cli("eval", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--adaptive-lambda", calib_path,
                   "--out", tmp_path / "b") == 2
    assert "calibrated for checkpoint ffffffffffff" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_per_set_selection_over_ranks_sums_their_residuals():
    """Under torchrun each rank selects on its batches and the residual sums are added over the ranks: every rank
    gets the lambda of the whole set."""
    model = tiny_model("sdnet18")
    contrast = torch.linspace(0.2, 1.0, 10).view(-1, 1, 1, 1)
    images = (torch.rand(10, 3, 32, 32) * contrast * 255).to(torch.uint8)
    batches = [(images[i:i + 3], None) for i in range(0, 10, 3)]  # 4 batches: ranks hold 2 and 2
    grid = list(default_grid(0.1, n=7))
    r = residual_grid(model, to_pixels(images, torch.device("cpu")), grid).double().mean(dim=1)
    calib = _calib(grid, a=grid[3] / float(r[3]), b=0.0)
    whole = select_for_set(model, batches, calib, torch.device("cpu"))
    partial: dict[int, list[float]] = {}

    class Recorded(Shard):  # records this rank's sums; returns them added to the other rank's
        def sum(self, values: list[float]) -> list[float]:
            partial[self.rank] = values
            return [a + b for a, b in zip(values, partial.get(1 - self.rank, [0.0] * len(values)))]

    select_for_set(model, batches[0::2], calib, torch.device("cpu"), Recorded(0, 2))
    chosen = select_for_set(model, batches[1::2], calib, torch.device("cpu"), Recorded(1, 2))
    assert partial[0][-1] + partial[1][-1] == 10, "the image counts add up"
    assert chosen == whole
    assert select_for_set(model, batches[1::2], calib, torch.device("cpu")) != whole, "a rank alone would differ"
    with pytest.raises(RobustlabError, match="no images"):
        select_for_set(model, [], calib, torch.device("cpu"))


def test_per_image_bisection_selects_the_exhaustive_rules_lambdas():
    import dataclasses

    from robustlab.adaptive import Fit, load_calibration, residual_grid, select_per_image
    from robustlab.corruptions import corrupt
    from robustlab.data import load_dataset
    model = robustlab.load_model("zoo:sdnet18-digits")
    calib = load_calibration(Path(__file__).parents[1] / "reports" / "adaptive-digits-calibration.json")
    images = load_dataset("digits").images[:48]
    for severity in (0, 3, 5):  # clean and two levels of gaussian noise: residuals across the grid's range
        x = images if severity == 0 else corrupt(images, "gaussian_noise", severity, seed=1)
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255
        for fit in (calib.fit, Fit(-2e-3, 0.6, 1.0), Fit(0.0, 0.2, 1.0)):  # crossings inside and at the ends
            c = dataclasses.replace(calib, fit=fit)
            want = c.select(residual_grid(model, x, c.grid))
            got, bisected = select_per_image(model, x, c)
            assert bisected and torch.equal(got, want), (severity, fit)
    rising = dataclasses.replace(calib, fit=Fit(1e-3, 0.0, 1.0))  # d need not be monotone: the whole grid
    got, bisected = select_per_image(model, x, rising)
    assert not bisected and torch.equal(got, rising.select(residual_grid(model, x, rising.grid)))
