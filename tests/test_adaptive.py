"""Algorithm 1: the fit, the selection rule, per-image lambda, calibration files, and the CLI paths."""
from __future__ import annotations

import json
import math
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
from robustlab.data import to_pixels
from robustlab.distributed import Shard
from robustlab.errors import RobustlabError
from robustlab.models import csc_layer
from robustlab.models.csc import restored
from tests.helpers import make_calibration, run_cli, tiny_model
from tests.numerics import assert_codes_close, assert_residuals_close, assert_rule_choice, csc_path_rtol, rule_choices

pytestmark = pytest.mark.numerics  # two kernel paths compared: also run under other kernels in .ci/run



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
    assert fit.a == pytest.approx(0.1)
    assert fit.b == pytest.approx(0.1)
    assert fit.r2 == pytest.approx(1.0)


def test_ties_take_the_smaller_lambda_and_constant_lambda_is_no_line():
    rows = [{"level": 0.1, "lambda": lam, "accuracy": 1.0, "residual_mean": 5.0 + lam, "n": 10}
            for lam in (0.3, 0.1, 0.2)]
    assert best_lambdas(rows)[0]["lambda"] == 0.1
    fit = fit_line([1.0, 2.0, 3.0], [0.1, 0.1, 0.1])
    assert fit.a == 0
    assert fit.b == pytest.approx(0.1)


def test_selection_picks_the_self_consistent_grid_point():
    calib = make_calibration([0.1, 0.2, 0.3, 0.4], a=0.1, b=0.0)
    # residual rises with lambda; lambda = 0.1 r is met exactly at lambda 0.3 (r = 3)
    residuals = torch.tensor([[2.0], [2.5], [3.0], [3.2]])
    assert float(calib.select(residuals)[0]) == pytest.approx(0.3)
    two = torch.tensor([[2.0, 0.0], [2.5, 1.0], [3.0, 1.5], [3.2, 4.0]])
    assert calib.select(two).tolist() == pytest.approx([0.3, 0.4])
    tie = torch.tensor([[0.0], [1.0], [9.0], [9.0]])  # gaps 0.1, 0.1, ...: the smaller lambda wins
    assert float(calib.select(tie)[0]) == pytest.approx(0.1)


def test_a_near_tie_is_decided_by_the_last_bits_and_admits_either_lambda():
    """At a near-tie the rule's lambda depends on the residuals' rounding, so two kernel paths may pick either of the
    tied lambdas (tests accept exactly those); where the decision is clear, only the rule's lambda is accepted."""
    calib = make_calibration([0.25, 0.5, 0.75], a=1.0, b=0.0)  # lambda = r; binary fractions, so the tie is exact
    residuals = torch.tensor([[0.375, 0.3], [0.375, 0.9], [2.0, 2.0]], dtype=torch.float64)  # column 0: gaps 1/8, 1/8
    assert calib.select(residuals).tolist() == [0.25, 0.25]
    nudged = residuals.clone()
    nudged[1, 0] *= 1 + 2.0 ** -24  # one float32 rounding step decides the tie the other way
    assert calib.select(nudged).tolist() == [0.5, 0.25]
    assert rule_choices(calib, residuals, 0.0) == [{0.25, 0.5}, {0.25}]
    assert rule_choices(calib, nudged, 1e-6) == [{0.25, 0.5}, {0.25}]
    assert rule_choices(calib, nudged, 0.0) == [{0.5}, {0.25}]
    assert_rule_choice(torch.tensor([0.5, 0.25]), calib, residuals, 1e-6)
    with pytest.raises(AssertionError):
        assert_rule_choice(torch.tensor([0.5, 0.5]), calib, residuals, 1e-6)


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
    residuals = residual_grid(model, x, grid)
    for k, lam in enumerate(grid):
        robustlab.set_lambda(model, lam)
        with torch.no_grad():
            model(x)
        assert_residuals_close(residuals[k], robustlab.last_residual(model), csc_layer(model))
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
    calib = make_calibration(grid, a=grid[3] / float(reference[3].median()), b=0.0)  # consistent mid-grid
    per_image = AdaptiveLambda(model, calib, per_image=True)
    with torch.no_grad():
        per_image(x)
    expected = calib.select(reference)
    assert len(set(expected.tolist())) > 1, "the images must pick different lambdas for the test to mean much"
    rtol = csc_path_rtol(csc_layer(model))  # the search's residuals and the forwards' agree to float rounding
    assert assert_rule_choice(per_image.last_lambdas, calib, reference, rtol) < len(x) // 2
    batches = [(0, images[:5]), (5, images[5:])]
    chosen = select_for_set(model, lambda: batches, calib, torch.device("cpu"), total=8)
    assert chosen.low == chosen.lmbda == chosen.high
    assert chosen.n == 8
    assert chosen.lmbda in rule_choices(calib, reference.double().mean(dim=1, keepdim=True), rtol)[0]


def test_per_image_selection_over_identical_images_equals_per_set():
    model = tiny_model("sdnet18")
    x = torch.rand(1, 3, 32, 32).repeat(5, 1, 1, 1)
    r = residual_grid(model, x[:1], [0.1, 0.2, 0.4])
    calib = make_calibration([0.1, 0.2, 0.4], a=0.2 / float(r[1, 0]), b=0.0)  # consistent at lambda 0.2
    per_image = AdaptiveLambda(model, calib, per_image=True)
    per_set = AdaptiveLambda(model, calib, per_image=False)
    with torch.no_grad():
        a, b = per_image(x), per_set(x)
    assert torch.equal(per_image.last_lambdas, per_set.last_lambdas)
    assert per_image.last_lambdas.tolist() == pytest.approx([0.2] * 5)
    assert torch.allclose(a, b)


def test_adaptive_model_passes_gradients_straight_through_selection():
    model = tiny_model("sdnet18")
    calib = make_calibration([0.1, 0.2], a=0.0, b=0.2)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    AdaptiveLambda(model, calib, per_image=True)(x).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0
    assert csc_layer(model).lmbda == 0.1, "the model's own lambda is restored after the forward"


def test_calibration_round_trip_and_rejections(tmp_path):
    calib = make_calibration([0.1, 0.2], a=0.05, b=0.1, sha="a" * 64)
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
    assert len(g) == 14
    assert g[0] == pytest.approx(0.1)
    assert g[-1] == pytest.approx(0.3)
    assert parse_grid("0.1:0.4:4", 0.1) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(RobustlabError, match="bad lambda grid"):
        parse_grid("0.1:x", 0.1)


def test_calibrate_then_evaluate_fixed_and_adaptive(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    calib_path = tmp_path / "calib.json"
    assert run_cli("calibrate", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--n", 24, "--levels",
                   "0.1,0.4", "--lambdas", "geom:0.1:0.3:3", "--out", calib_path, "--quiet") == 0
    calib = load_calibration(calib_path)
    assert calib.calibration_split == "digits/train"
    assert len(calib.sweep) == 6
    assert len(calib.points) == 2
    assert (tmp_path / "calib.png").is_file()
    assert (tmp_path / "calib.svg").is_file()
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
        sampled = "--select-n" in flag
        assert list(df["flags"].astype("string").fillna("")) == ["", "lambda_from_sample_8" if sampled else ""] * 2
        bounds = df[["lambda_low", "lambda_high"]]
        assert bounds[df["lambda_mode"] == "fixed"].isna().all().all()
        if mode == "adaptive-set":  # the default sample (1000) holds all 24 images: the bounds are the lambda
            rows = df[df["lambda_mode"] == mode]
            assert (rows["lambda_low"] <= rows["lambda"]).all()
            assert (rows["lambda"] <= rows["lambda_high"]).all()
            assert sampled or (rows["lambda_low"] == rows["lambda_high"]).all()
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
    make_calibration([0.1], a=0.0, b=0.1, sha="f" * 64).save(calib_path)
    assert run_cli("eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--lambda", "0.3",
                   "--out", tmp_path / "a") == 2
    assert "has no CSC layer" in capsys.readouterr().err
    assert run_cli("eval", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--adaptive-lambda", calib_path,
                   "--out", tmp_path / "b") == 2
    assert "calibrated for checkpoint ffffffffffff" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_per_set_selection_over_ranks_sums_their_residuals():
    """Under torchrun each rank selects on its batches and the residual sums are added over the ranks: every rank
    gets the lambda of the whole set."""
    model = tiny_model("sdnet18")
    contrast = torch.linspace(0.2, 1.0, 10).view(-1, 1, 1, 1)
    images = (torch.rand(10, 3, 32, 32) * contrast * 255).to(torch.uint8)
    batches = [(i, images[i:i + 3]) for i in range(0, 10, 3)]  # 4 batches: ranks hold 2 and 2
    grid = list(default_grid(0.1, n=7))
    r = residual_grid(model, to_pixels(images, torch.device("cpu")), grid).double().mean(dim=1)
    calib = make_calibration(grid, a=grid[3] / float(r[3]), b=0.0)
    whole = select_for_set(model, lambda: batches, calib, torch.device("cpu"), total=10).lmbda
    # two ranks in two threads, in lockstep as all_reduce keeps them: each pass's sums are exchanged and added
    import copy
    import threading
    exchange: dict[int, list[float]] = {}
    counts: dict[int, float] = {}
    meet = threading.Barrier(2, timeout=60)

    class Paired(Shard):
        def sum(self, values: list[float]) -> list[float]:
            exchange[self.rank], counts[self.rank] = values, values[-1]
            meet.wait()
            added = [a + b for a, b in zip(exchange[0], exchange[1])]
            meet.wait()  # both have read before either writes the next pass's
            return added

    chosen: dict[int, object] = {}
    replicas = [copy.deepcopy(model) for _ in range(2)]  # a process each under torchrun: nothing shared

    def rank(k: int) -> None:
        try:
            chosen[k] = select_for_set(replicas[k], lambda: batches[k::2], calib, torch.device("cpu"), total=10,
                                       shard=Paired(k, 2))
        except BaseException as e:  # the other rank then stops at the barrier; the test reports this one
            chosen[k] = e
            meet.abort()

    threads = [threading.Thread(target=rank, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (0, 1):
        if isinstance(chosen[k], BaseException) and not isinstance(chosen[k], threading.BrokenBarrierError):
            raise chosen[k]
    assert counts[0] + counts[1] == 10, "the image counts add up"
    assert chosen[0] == chosen[1]
    assert chosen[1].lmbda == whole
    assert chosen[1].n == 10
    alone = select_for_set(model, lambda: batches[1::2], calib, torch.device("cpu"), total=10)
    assert alone.lmbda != whole, "a rank alone would differ"
    with pytest.raises(RobustlabError, match="no images"):
        select_for_set(model, lambda: [], calib, torch.device("cpu"), total=10)


def test_per_image_bisection_selects_the_exhaustive_rules_lambdas():
    """The certified bisection against the exhaustive rule on real images, for fits with falling, flat and rising
    lines (the calibrations of the paper's kind rise), and a rising fit so steep that d is not monotone: there
    certification must evaluate more of the grid, and the lambdas must still be the rule's."""
    import dataclasses

    from robustlab.adaptive import load_calibration, residual_grid, select_per_image
    from robustlab.corruptions import corrupt
    from robustlab.data import load_dataset
    model = robustlab.load_model("zoo:sdnet18-digits")
    calib = load_calibration(Path(__file__).parents[1] / "reports" / "adaptive-digits-calibration.json")
    images = load_dataset("digits").images[:48]
    whole, ties, rtol = {}, {}, csc_path_rtol(csc_layer(model))
    for severity in (0, 3, 5):  # clean and two levels of gaussian noise: residuals across the grid's range
        x = images if severity == 0 else corrupt(images, "gaussian_noise", severity, seed=1)
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255
        residuals = residual_grid(model, x, calib.grid)
        mid = float(residuals[len(calib.grid) // 2].median())
        fits = {"calibrated": calib.fit, "falling": Fit(-2e-3, 0.6, 1.0), "flat": Fit(0.0, 0.2, 1.0),
                "rising": Fit(0.2 / mid, 0.0, 1.0), "steep": Fit(40.0 / mid, -39.8, 1.0)}
        for name, fit in fits.items():
            c = dataclasses.replace(calib, fit=fit)
            chosen = select_per_image(model, x, c)
            whole[name, severity] = chosen.evaluations / len(x)
            ties[name, severity] = assert_rule_choice(chosen.lambdas, c, residuals, rtol)
            with restored(csc_layer(model)) as csc:  # what is kept is the layer's output at those lambdas
                csc.lmbda = chosen.lambdas
                out = []
                handle = csc.register_forward_hook(lambda _m, _i, o: out.append(o))
                with torch.no_grad():
                    model(x)
                handle.remove()
                assert_codes_close(chosen.presolved.code, out[0], csc)
                assert_residuals_close(chosen.presolved.residual, csc.residual, csc)
        assert len(set(c.select(residuals).tolist())) > 1 or severity == 0
    assert sum(ties.values()) <= len(images), f"near-ties must be rare for the equality to mean much: {ties}"
    assert all(whole[name, s] <= 5 for name in ("calibrated", "falling", "flat", "rising") for s in (0, 3, 5))
    assert max(whole["steep", s] for s in (0, 3, 5)) > 8, "a steep line must need more of the grid"


def test_selection_bounds_equal_the_rule_over_every_corner_of_the_box():
    """selection_bounds against the rule itself applied to every combination of each residual's candidate values:
    both ends of its interval and the point in it where its lambda is consistent (the gap's minimum)."""
    import itertools

    from robustlab.adaptive import selection_bounds
    rng = np.random.default_rng(0)
    grid = [0.1, 0.15, 0.2, 0.25, 0.3]
    widths = set()
    for _ in range(150):
        a, b = float(rng.choice([-1, 1]) * rng.uniform(1e-4, 1e-3)), float(rng.uniform(0.0, 0.3))
        calib = make_calibration(grid, a=a, b=b)
        mean = (np.array(grid) - b) / a + rng.normal(0, 40, len(grid))
        half = rng.uniform(0, rng.choice([2.0, 80.0]), len(grid)) * (rng.random(len(grid)) < 0.8)
        candidates = [sorted({m - h, m + h, min(max((g - b) / a, m - h), m + h)})
                      for g, m, h in zip(grid, mean, half)]
        chosen = {float(calib.select(torch.tensor(r, dtype=torch.float64).view(-1, 1))[0])
                  for r in itertools.product(*candidates)}
        low, high = selection_bounds(calib, mean, half)
        assert (low, high) == (min(chosen), max(chosen))
        widths.add(high - low)
    assert min(widths) == 0, "the trials must include narrow and wide bounds"
    assert max(widths) >= 0.1, "the trials must include narrow and wide bounds"


def test_a_sampled_selection_bounds_the_whole_sets_lambda():
    """Per-set selection on a seeded sample of 100 of 450 noisy digits: its 95% bounds hold the lambda all 450
    select, on three severities and three samples; the sample is the same for the same seed."""
    from robustlab.adaptive import sample_mask
    from robustlab.corruptions import corrupt
    from robustlab.data import load_dataset
    model = robustlab.load_model("zoo:sdnet18-digits")
    calib = load_calibration(Path(__file__).parents[1] / "reports" / "adaptive-digits-calibration.json")
    images = load_dataset("digits").images[:450]
    assert sample_mask(450, 450, 0) is None
    assert sample_mask(450, 100, 1).sum() == 100
    assert np.array_equal(sample_mask(450, 100, 1), sample_mask(450, 100, 1))
    assert not np.array_equal(sample_mask(450, 100, 1), sample_mask(450, 100, 2))
    informative = 0
    for severity in (1, 3, 5):
        x = torch.from_numpy(np.ascontiguousarray(corrupt(images, "gaussian_noise", severity, seed=1)))
        x = x.permute(0, 3, 1, 2).contiguous()
        batches = lambda: [(i, x[i:i + 128]) for i in range(0, 450, 128)]  # noqa: E731
        whole = select_for_set(model, batches, calib, torch.device("cpu"), total=450)
        for seed in (0, 1, 2):
            part = select_for_set(model, batches, calib, torch.device("cpu"), total=450,
                                  mask=sample_mask(450, 100, seed))
            assert part.n == 100, (severity, seed)
            assert part.low <= whole.lmbda <= part.high, (severity, seed)
            informative += part.high - part.low < max(calib.grid) - min(calib.grid)
    assert informative, "the bounds must be narrower than the grid somewhere"


def test_per_image_selection_equals_the_rule_on_hand_made_residual_tables(monkeypatch):
    """select_per_image against Calibration.select on residuals made by hand (the CSC layer replaced): rising
    and falling lines, float32 and float64, a grid out of order, residuals that do not grow, and NaN residuals
    (which must neither hang the search nor change the answer where the search sees them)."""
    import robustlab.adaptive.per_image as per_image
    from robustlab.adaptive import select_per_image
    model = tiny_model("sdnet18")
    csc = csc_layer(model)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(per_image, "layer_input", lambda m, layer, x: x)
    grid = list(default_grid(0.1, n=9))
    checked = 0
    for trial in range(60):
        dtype = (torch.float32, torch.float64)[trial % 2]
        n = 40
        residuals = torch.from_numpy(np.cumsum(rng.uniform(0, 30, (n, len(grid))), axis=1) + 500).to(dtype)
        order = list(range(len(grid)))
        if trial % 5 == 1:
            rng.shuffle(order)  # a grid out of order
        if trial % 5 == 2:
            residuals[:5] = residuals[:5].flip(1)  # residuals that fall
        if trial % 5 == 3:
            # NaN pixels give NaN at every lambda; NaN at the ends (always evaluated) tests the rest of the row. A
            # NaN at a single lambda the search never evaluates cannot be seen (select_per_image says so)
            residuals[0] = residuals[1, 0] = residuals[2, -1] = math.nan
        shuffled = [grid[k] for k in order]
        residuals = residuals[:, order]
        mid = float(residuals[:, len(grid) // 2].nan_to_num(600).median())
        slope = float(rng.choice([-1, 1])) * (0.1 / mid)
        calib = make_calibration(shuffled, a=slope, b=0.2 - slope * mid)
        monkeypatch.setattr(csc, "solve_at", lambda x, lambdas, t=residuals: lambda images, index: iter(
            [(t[images, index], torch.zeros(len(images), 1))]))
        got = select_per_image(model, torch.zeros(n, 3, 32, 32, dtype=dtype), calib).lambdas
        want = calib.select(residuals.t().contiguous())
        assert torch.equal(got, want), trial
        checked += 1
    assert checked == 60


def test_per_set_search_selects_the_exhaustive_rules_lambda_in_a_few_passes(monkeypatch):
    """select_for_set (all images) and AdaptiveLambda per set search the set's mean residual instead of solving the
    whole grid: on real noisy digits, for falling, flat, rising and calibrated lines and one so steep that d is
    not monotone, both pick the exhaustive rule's lambda; the first four solve the layer at a few lambdas, in a few
    passes over the set, the steep one at more."""
    import dataclasses

    from robustlab.corruptions import corrupt
    from robustlab.data import load_dataset
    model = robustlab.load_model("zoo:sdnet18-digits")
    calib = load_calibration(Path(__file__).parents[1] / "reports" / "adaptive-digits-calibration.json")
    images = load_dataset("digits").images[:96]
    csc = csc_layer(model)
    solve_at, solved = csc.solve_at, []

    def counted(x: torch.Tensor, lambdas: list[float]):  # counts the (image, lambda) pairs solved
        at = solve_at(x, lambdas)
        return lambda images, index: (solved.append(len(r[0])) or r for r in at(images, index))
    monkeypatch.setattr(csc, "solve_at", counted)
    passes, lambdas, rtol = {}, {}, csc_path_rtol(csc_layer(model))
    for severity in (0, 3, 5):
        noisy = images if severity == 0 else corrupt(images, "gaussian_noise", severity, seed=1)
        x = torch.from_numpy(np.ascontiguousarray(noisy)).permute(0, 3, 1, 2).contiguous()
        pixels = to_pixels(x, torch.device("cpu"))
        mean = residual_grid(model, pixels, calib.grid).double().mean(dim=1, keepdim=True)
        mid = float(mean[len(calib.grid) // 2])
        fits = {"calibrated": calib.fit, "falling": Fit(-2e-3, 0.6, 1.0), "flat": Fit(0.0, 0.2, 1.0),
                "rising": Fit(0.2 / mid, 0.0, 1.0), "steep": Fit(40.0 / mid, -39.8, 1.0)}
        for name, fit in fits.items():
            c = dataclasses.replace(calib, fit=fit)
            want = float(c.select(mean)[0])
            calls, solved[:] = [], []

            def batches() -> list[tuple[int, torch.Tensor]]:
                calls.append(1)
                return [(i, x[i:i + 40]) for i in range(0, len(x), 40)]
            chosen = select_for_set(model, batches, c, torch.device("cpu"), total=len(x))
            assert chosen.lmbda == chosen.low == chosen.high, (severity, name)
            assert chosen.n == len(x), (severity, name)
            assert chosen.lmbda in rule_choices(c, mean, rtol)[0], (severity, name, want)
            passes[name, severity], lambdas[name, severity] = len(calls), sum(solved) / len(x)
            per_set = AdaptiveLambda(model, c, per_image=False)
            with torch.no_grad():
                per_set(pixels)
            assert_rule_choice(per_set.last_lambdas, c, mean.expand(-1, len(x)), rtol)
            assert len(set(per_set.last_lambdas.tolist())) == 1, (severity, name)
    gentle = [(name, s) for name in ("calibrated", "falling", "flat", "rising") for s in (0, 3, 5)]
    assert all(lambdas[k] <= 5 and passes[k] <= 4 for k in gentle), (lambdas, passes)
    assert max(lambdas["steep", s] for s in (0, 3, 5)) > 5, "a steep line must need more of the grid"


def test_a_set_search_takes_few_passes_where_d_hardly_changes():
    """The set-mean search on hand-made growing residuals: the rule's lambda for 300 random lines, and on a line
    along which d barely moves (one pass per lambda if certification only ever took the outermost) 3 passes."""
    from robustlab.adaptive import OFFICIAL_GRID
    from robustlab.adaptive.search import MeanSearch

    def search(calib: Calibration, residuals: np.ndarray) -> tuple[float, int]:
        passes = []
        chosen = MeanSearch(calib, lambda index: passes.append(index) or residuals[index]).run()
        return float(calib.grid[chosen[0]]), len(passes)

    flat = np.array([5.231, 6.238, 8.304, 8.718, 9.805, 10.621, 10.943, 11.628, 12.499, 12.525, 13.848, 13.955,
                     14.659, 15.247])
    calib = make_calibration(OFFICIAL_GRID, a=0.11825, b=-0.55039)
    lmbda, passes = search(calib, flat)
    assert lmbda == float(calib.select(torch.tensor(flat).view(-1, 1))[0]), passes
    assert passes <= 3, passes
    rng = np.random.default_rng(0)
    for _ in range(300):
        residuals = np.cumsum(rng.uniform(0, 2, len(OFFICIAL_GRID))) + 5
        calib = make_calibration(OFFICIAL_GRID, a=float(rng.uniform(-0.3, 0.3)), b=float(rng.uniform(-1, 1)))
        assert search(calib, residuals)[0] == float(calib.select(torch.tensor(residuals).view(-1, 1))[0])
