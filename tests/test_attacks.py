"""The attack layer: eps parsing, spec validation, the checking harness, transfer, diagnostics and suite files."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.nn as nn
import torchattacks

import robustlab
from robustlab.attacks import (
    ATTACKS,
    AttackSpec,
    attack_batch,
    attack_suite_names,
    check_black_box,
    check_deterministic,
    check_eps_monotonic,
    check_large_eps,
    check_zero_gradients,
    input_gradient,
    load_attack_suite,
    make_spec,
    parse_eps,
    run_diagnostics,
    transfer_batch,
)
from robustlab.attacks.draws import ImageDraws
from robustlab.errors import RobustlabError
from tests.helpers import tiny_model

pytestmark = pytest.mark.numerics  # two kernel paths compared: also run under other kernels in .ci/run

ULP = 2 * torch.finfo(torch.float32).eps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot to them when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return tiny_model("resnet18")


@pytest.fixture(scope="module")
def sdnet() -> nn.Module:
    return tiny_model("sdnet18")


@pytest.fixture(scope="module")
def batch(resnet) -> tuple[torch.Tensor, torch.Tensor]:
    """Six images; the first four labelled as the tiny ResNet predicts them, the last two wrongly."""
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = resnet(x).argmax(1)
    y[4:] = (y[4:] + 1) % 10
    return x, y


class SignNet(nn.Module):
    """A sign activation: differentiable graph, zero input gradient everywhere."""

    def __init__(self, no_grad: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.no_grad = no_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.no_grad):
            return self.fc(torch.sign(x - 0.5).flatten(1))


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


# --- eps and specs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.0314", 0.0314), (0.03, 0.03), (" 8 / 255 ", 8 / 255),
                                         ("1e-3", 1e-3), (1, 1.0), ("0", 0.0), ("0.5/2", 0.25)])
def test_parse_eps_accepts(text, value):
    assert parse_eps(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["-8/255", "8/-255", -0.1, "nan", float("nan"), "inf", float("inf"), "8/0", "abc",
                                  "8/255/2", "", "8/", True, None, 10 ** 400])
def test_parse_eps_refuses_with_the_value(text):
    with pytest.raises(RobustlabError) as e:
        parse_eps(text)
    assert repr(text)[:20] in str(e.value)
    assert "8/255" in str(e.value)


def test_make_spec_resolves_defaults():
    pgd = make_spec("pgd-linf", eps="8/255")
    assert (pgd.norm, pgd.steps, pgd.restarts) == ("Linf", 10, 1)
    assert pgd.alpha == pytest.approx(2.5 * (8 / 255) / 10)
    assert make_spec("pgd-linf", eps="8/255", steps=20, alpha="1/255").alpha == pytest.approx(1 / 255)
    assert make_spec("pgd-l2", eps=0.5).norm == "L2"
    assert make_spec("apgd-ce", eps="8/255").norm == "Linf"
    assert make_spec("apgd-ce", eps=0.5, norm="L2").norm == "L2"
    assert make_spec("apgd-ce", eps="8/255").steps == 100
    assert make_spec("apgd-ce", eps="8/255").alpha is None
    assert (make_spec("square", eps="8/255").queries, make_spec("square", eps="8/255").steps) == (5000, 0)
    assert make_spec("autoattack", eps="8/255").steps == 100
    assert make_spec("pgd-l2", eps=8).eps == 8.0  # an L2 budget may exceed 1
    assert not ATTACKS.get("square").white_box
    assert ATTACKS.get("pgd-linf").white_box


@pytest.mark.parametrize("kwargs, words", [
    (dict(name="pgd-linf", eps=-0.1), ["-0.1", "negative"]),
    (dict(name="pgd-linf", eps=float("nan")), ["nan", "not finite"]),
    (dict(name="pgd-linf", eps=0), ["eps 0", "none"]),
    (dict(name="pgd-linf", eps="8/255", steps=0), ["steps", "0"]),
    (dict(name="pgd-linf", eps="8/255", steps=-3), ["steps", "-3"]),
    (dict(name="pgd-linf", eps="8/255", steps=2.5), ["steps", "2.5"]),
    (dict(name="pgd-linf", eps="8/255", restarts=0), ["restarts", "0"]),
    (dict(name="fgsm", eps="8/255", norm="L2"), ["fgsm", "'L2'", "pgd-l2"]),
    (dict(name="pgd-l2", eps=0.5, norm="Linf"), ["pgd-l2", "'Linf'", "pgd-linf"]),
    (dict(name="pgd-linf", eps="8/255", norm="l2"), ["'l2'", "Linf or L2"]),
    (dict(name="pgd-linf", eps=8), ["Linf eps 8", "8/255"]),
    (dict(name="autoattack", eps="8/255", steps=10), ["autoattack", "100", "steps=10"]),
    (dict(name="autoattack", eps="8/255", queries=100), ["autoattack", "5000", "queries=100"]),
    (dict(name="square", eps="8/255", steps=100), ["square takes no steps", "--queries"]),
    (dict(name="pgd-linf", eps="8/255", queries=100), ["pgd-linf takes no queries", "--steps"]),
    (dict(name="fgsm", eps="8/255", restarts=3), ["fgsm", "restarts=3"]),
    (dict(name="apgd-ce", eps="8/255", alpha="1/255"), ["apgd-ce", "alpha", "drop alpha"]),
    (dict(name="pgd-linf", eps="8/255", alpha=-1), ["alpha", "-1"]),
])
def test_bad_specs_are_refused_naming_the_value(kwargs, words):
    with pytest.raises(RobustlabError) as e:
        make_spec(kwargs.pop("name"), **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_unknown_attack_lists_the_known_ones():
    with pytest.raises(RobustlabError) as e:
        make_spec("pgd", eps="8/255")
    msg = str(e.value)
    assert "did you mean" in msg
    assert all(name in msg for name in ATTACKS)
    assert sorted(ATTACKS) == ["apgd-ce", "apgd-t", "autoattack", "fab-t", "fgsm", "pgd-l2", "pgd-linf", "square",
                               "square-aa"]


def test_a_stand_in_replaces_an_entry_only_inside_its_block():
    from robustlab.registry import Registry
    registry: Registry[str] = Registry("thing")
    registry.register("a", "first")
    with registry.replaced("a", "stand-in") as entry:
        assert entry == "stand-in"
        assert registry.get("a") == "stand-in"
    assert registry.get("a") == "first"
    with pytest.raises(RobustlabError, match="unknown thing 'b'"):
        with registry.replaced("b", "x"):
            pass
    assert "b" not in registry


def test_spec_constructor_validates_too():
    with pytest.raises(RobustlabError, match="steps"):
        AttackSpec(name="pgd-linf", norm="Linf", eps=0.03, steps=0, alpha=0.01, restarts=1)
    with pytest.raises(RobustlabError, match="step size"):
        AttackSpec(name="pgd-linf", norm="Linf", eps=0.03, steps=10, alpha=None, restarts=1)


# --- the harness -----------------------------------------------------------------------------------------------

ATTACK_CASES = [
    dict(name="fgsm", eps="8/255"),
    dict(name="pgd-linf", eps="8/255", steps=5),
    dict(name="pgd-linf", eps="2/255", steps=3, restarts=3),
    dict(name="pgd-l2", eps=0.5, steps=5),
    dict(name="apgd-ce", eps="8/255", steps=5),
    dict(name="apgd-ce", eps=0.5, norm="L2", steps=5),
    dict(name="apgd-t", eps="8/255", steps=5),
    dict(name="apgd-t", eps=0.5, norm="L2", steps=5),
    dict(name="autoattack", eps="8/255"),
    dict(name="fab-t", eps="8/255", steps=5),
    dict(name="fab-t", eps=0.5, norm="L2", steps=5),
    dict(name="square-aa", eps="8/255", queries=100),
    dict(name="square", eps="8/255", queries=100),
    dict(name="square", eps=2.0, norm="L2", queries=100),
]


@pytest.mark.parametrize("case", ATTACK_CASES, ids=lambda c: f"{c['name']}-{c.get('norm', '')}-{c['eps']}")
def test_every_attack_stays_in_the_ball_and_the_pixel_range(case, resnet, batch):
    x, y = batch
    spec = make_spec(case.pop("name"), **case)
    out = attack_batch(resnet, x, y, spec, seed=0)
    delta = (out.adversarial - x).flatten(1).double()
    size = delta.abs().amax(1) if spec.norm == "Linf" else delta.norm(dim=1)
    slack = spec.eps * 1e-6 + ULP * (1 if spec.norm == "Linf" else math.sqrt(3 * 32 * 32))
    assert out.adversarial.shape == x.shape
    assert out.adversarial.dtype == torch.float32
    assert float(out.adversarial.min()) >= 0
    assert float(out.adversarial.max()) <= 1
    assert float(size.max()) <= spec.eps + slack
    assert out.max_perturbation == pytest.approx(float(size.max()))
    assert out.clean_accuracy == pytest.approx(4 / 6)
    assert out.robust_accuracy < out.clean_accuracy  # the attack did something: every one breaks this tiny net
    assert not out.projected.any()


def test_robust_means_clean_correct_and_still_correct(resnet, batch):
    x, y = batch
    out = attack_batch(resnet, x, y, make_spec("pgd-linf", eps="1.5/255", steps=3), seed=0)
    with torch.no_grad():
        adv_correct = resnet(out.adversarial).argmax(1) == y
    assert torch.equal(out.adv_correct, adv_correct)
    assert torch.equal(out.clean_correct, torch.tensor([True] * 4 + [False] * 2))
    assert torch.equal(out.robust, out.clean_correct & adv_correct)
    assert not (out.robust & ~out.clean_correct).any()
    assert 0 < out.robust.sum() < 4


def test_same_seed_same_result_and_caller_rng_untouched(sdnet, batch):
    x, y = batch
    spec = make_spec("pgd-linf", eps="8/255", steps=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = attack_batch(sdnet, x, y, spec, seed=7)
    assert torch.equal(torch.rand(3), expected)  # the harness gives the caller its random stream back
    b = attack_batch(sdnet, x, y, spec, seed=7)
    c = attack_batch(sdnet, x, y, spec, seed=8)
    assert torch.equal(a.adversarial, b.adversarial)
    assert torch.equal(a.robust, b.robust)
    assert not torch.equal(a.adversarial, c.adversarial)  # the seed drives the random start
    for spec in (make_spec("apgd-ce", eps="8/255", steps=3), make_spec("square", eps="8/255", queries=20)):
        a, b = (attack_batch(sdnet, x, y, spec, seed=5) for _ in range(2))
        assert torch.equal(a.adversarial, b.adversarial)
        assert a.robust_accuracy == b.robust_accuracy


def test_pgd_matches_torchattacks_called_directly(resnet, batch):
    """The harness adds nothing to torchattacks' PGD but its random start, drawn per image (seed + row)."""
    x, y = batch
    spec = make_spec("pgd-linf", eps="1.5/255", steps=5)
    out = attack_batch(resnet, x, y, spec, seed=3)
    torch.manual_seed(3)
    with ImageDraws.seeded([3 + row for row in range(len(x))]):
        direct = torchattacks.PGD(resnet, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True)(x, y)
    with torch.no_grad():
        direct_robust = (resnet(x).argmax(1) == y) & (resnet(direct).argmax(1) == y)
    assert 0 < out.robust_accuracy < out.clean_accuracy  # a budget where the comparison means something
    assert out.robust_accuracy == float(direct_robust.float().mean())
    assert torch.equal(out.robust, direct_robust)
    assert torch.equal(out.adversarial, direct)


@pytest.fixture(scope="module")
def four_classes() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 4-class model (3 target classes keep AutoAttack cheap) and 12 images labelled as it predicts them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 4)).eval()
    x = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def test_autoattack_without_per_image_streams_is_autoattacks_own_loop(four_classes):
    """robustlab's AutoAttack loop (rewritten to draw per image) is run_standard_evaluation's, draw for draw, when
    it draws from one stream as AutoAttack does."""
    from pyautoattack import AutoAttack
    model, x, y = four_classes
    spec = make_spec("autoattack", eps="2/255")
    reference = AutoAttack(model, norm="Linf", eps=spec.eps, seed=5, version="standard", device=x.device)
    reference.apgd_targeted.n_target_classes = reference.fab.n_target_classes = 3
    expected, _ = reference.run_standard_evaluation(x.clone(), y.clone(), batch_size=len(x))
    with torch.enable_grad():
        got = ATTACKS.get("autoattack").run(model, x.clone(), y.clone(), spec, seed=5, num_classes=4, draws=None)
    assert not torch.equal(expected, x)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name, restarts", [("apgd-ce", 2), ("apgd-t", 1)])
def test_apgd_without_per_image_streams_is_autoattacks_own_loop(name, restarts, four_classes):
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    model, x, y = four_classes
    spec = make_spec(name, eps="2/255", steps=10, restarts=restarts)
    common = dict(n_iter=10, norm="Linf", n_restarts=restarts, eps=spec.eps, seed=3)
    reference = APGDAttack_targeted(model, n_target_classes=3, **common) if name == "apgd-t" \
        else APGDAttack(model, loss="ce", **common)
    expected = reference.perturb(x.clone(), y.clone())
    got = ATTACKS.get(name).run(model, x.clone(), y.clone(), spec, seed=3, num_classes=4, draws=None)
    assert not torch.equal(expected, x)
    assert torch.equal(got, expected)


def test_autoattack_is_the_worst_case_of_its_four_attacks_run_separately(four_classes):
    """With per-image streams an image's AutoAttack outcome is that of the four attacks run alone on every image
    with the same seed: robust under the ensemble exactly when robust under each."""
    from robustlab.attacks.adapters import AUTOATTACK_STANDARD
    model, x, y = four_classes
    alone = {name: attack_batch(model, x, y, make_spec(name, eps="2/255"), seed=5).robust
             for name in AUTOATTACK_STANDARD}
    ensemble = attack_batch(model, x, y, make_spec("autoattack", eps="2/255"), seed=5).robust
    survives_all = torch.stack(list(alone.values())).all(0)
    assert not torch.equal(alone["apgd-ce"], survives_all), "a later attack breaks an image APGD-CE left"
    assert 0 < int(survives_all.sum()) < len(x)
    assert torch.equal(ensemble, survives_all)


def test_eval_mode_bn_statistics_and_weights_are_untouched(sdnet, batch):
    x, y = batch
    before, params = bn_buffers(sdnet), {k: v.clone() for k, v in sdnet.named_parameters()}
    attack_batch(sdnet, x, y, make_spec("apgd-ce", eps="8/255", steps=3), seed=0)
    assert not any(m.training for m in sdnet.modules())
    assert all(torch.equal(v, bn_buffers(sdnet)[k]) for k, v in before.items())
    assert len(before) > 10
    assert all(torch.equal(v, dict(sdnet.named_parameters())[k]) for k, v in params.items())
    assert all(p.requires_grad and p.grad is None for p in sdnet.parameters())


@pytest.fixture
def misbehaving() -> Iterator[Callable[[Callable[..., torch.Tensor]], object]]:
    """misbehaving(run): `fgsm` runs `run` instead for the rest of the test (through the registry's `replaced`)."""
    with contextlib.ExitStack() as stack:
        yield lambda run: stack.enter_context(ATTACKS.replaced("fgsm", dataclasses.replace(ATTACKS.get("fgsm"),
                                                                                              run=run)))


def test_an_attack_that_leaves_training_mode_is_caught(misbehaving, batch):
    model = tiny_model("resnet18")
    before = bn_buffers(model)

    def train_mode(model, x, y, spec, *, seed, num_classes, draws):
        model.train()
        return x

    misbehaving(train_mode)
    with pytest.raises(RobustlabError, match="left the model in training mode"):
        attack_batch(model, *batch, make_spec("fgsm", eps="8/255"), seed=0)
    assert not model.training
    assert all(torch.equal(v, bn_buffers(model)[k]) for k, v in before.items())


def test_an_attack_that_moves_bn_statistics_is_caught_and_undone(misbehaving, batch):
    model = tiny_model("resnet18")
    before = bn_buffers(model)

    def moves_stats(model, x, y, spec, *, seed, num_classes, draws):
        model.train()
        model(x)
        model.eval()
        return x

    misbehaving(moves_stats)
    with pytest.raises(RobustlabError, match="changed BatchNorm running statistics"):
        attack_batch(model, *batch, make_spec("fgsm", eps="8/255"), seed=0)
    assert all(torch.equal(v, bn_buffers(model)[k]) for k, v in before.items())


def test_slightly_outside_is_projected_and_counted_grossly_outside_is_an_error(misbehaving, resnet, batch):
    x, y = batch
    spec = make_spec("fgsm", eps="8/255")
    misbehaving(lambda model, x, y, spec, **kw: (x + spec.eps * (1 + 1e-4)).clamp(0, 1))
    out = attack_batch(resnet, x, y, spec, seed=0)
    assert out.projected.all()
    assert out.max_perturbation <= spec.eps * (1 + 1e-6) + ULP

    def above_one(model, x, y, spec, **kw):
        adv = x.clone()
        adv[0].view(-1)[x[0].argmax()] = 1 + 1e-5  # the brightest pixel: within eps of it, but above 1
        return adv

    misbehaving(above_one)
    out = attack_batch(resnet, x, y, spec, seed=0)
    assert out.projected.tolist() == [True] + [False] * 5
    assert float(out.adversarial.max()) <= 1

    misbehaving(lambda model, x, y, spec, **kw: (x + 2 * spec.eps).clamp(0, 1))
    with pytest.raises(RobustlabError, match="far outside the Linf ball"):
        attack_batch(resnet, x, y, spec, seed=0)


@pytest.mark.parametrize("x, y, words", [
    (torch.rand(2, 3, 32, 32) * 2, torch.tensor([0, 1]), ["[0, 1]", "normalization"]),
    ((torch.rand(2, 3, 32, 32) * 255).to(torch.uint8), torch.tensor([0, 1]), ["torch.uint8", "/ 255"]),
    (torch.rand(2, 3, 32, 32), torch.tensor([0, 12]), ["0..12", "10 classes"]),
    (torch.rand(2, 3, 32, 32), torch.tensor([0]), ["shape (2,)"]),
])
def test_bad_batches_are_refused(resnet, x, y, words):
    with pytest.raises(RobustlabError) as e:
        attack_batch(resnet, x, y, make_spec("fgsm", eps="8/255"), seed=0)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_training_mode_model_and_bad_seed_are_refused(batch):
    model = tiny_model("resnet18").train()
    with pytest.raises(RobustlabError, match=r"training mode; call model.eval\(\)"):
        attack_batch(model, *batch, make_spec("fgsm", eps="8/255"), seed=0)
    with pytest.raises(RobustlabError, match="seed"):
        attack_batch(model.eval(), *batch, make_spec("fgsm", eps="8/255"), seed=-1)


def test_transfer_returns_one_outcome_per_target(resnet, sdnet, batch):
    x, y = batch
    spec = make_spec("pgd-linf", eps="8/255", steps=3)
    outcomes = transfer_batch(resnet, {"self": resnet, "sdnet": sdnet}, x, y, spec, seed=0)
    assert list(outcomes) == ["self", "sdnet"]
    on_source = attack_batch(resnet, x, y, spec, seed=0)
    assert torch.equal(outcomes["self"].robust, on_source.robust)
    assert torch.equal(outcomes["sdnet"].adversarial, on_source.adversarial)
    with torch.no_grad():
        expected = (sdnet(x).argmax(1) == y) & (sdnet(on_source.adversarial).argmax(1) == y)
    assert torch.equal(outcomes["sdnet"].robust, expected)
    with pytest.raises(RobustlabError, match="at least one target"):
        transfer_batch(resnet, {}, x, y, spec, seed=0)


# --- diagnostics -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("no_grad", [False, True], ids=["sign", "sign-under-no-grad"])
def test_zero_gradient_diagnostic_fires_on_a_sign_model_and_white_box_attacks_still_run(no_grad, resnet, batch):
    x, y = batch
    model = SignNet(no_grad=no_grad).eval()
    flag, warning = check_zero_gradients(input_gradient(model, x, y))
    assert flag
    assert "100% of the images have a zero input gradient" in warning
    for spec in (make_spec("pgd-linf", eps="8/255", steps=2), make_spec("apgd-ce", eps="8/255", steps=2)):
        out = attack_batch(model, x, y, spec, seed=0)
        assert out.max_perturbation <= spec.eps + ULP
    assert check_zero_gradients(input_gradient(resnet, x, y)) == (False, "")


def test_crafted_results_fire_the_other_checks():
    flag, warning = check_eps_monotonic([(2 / 255, 0.30), (1 / 255, 0.50), (4 / 255, 0.35)])
    assert flag
    assert "rises from 30.00%" in warning
    assert "35.00%" in warning
    assert check_eps_monotonic([(1 / 255, 0.5), (2 / 255, 0.3), (4 / 255, 0.3)]) == (False, "")
    assert not check_eps_monotonic([(1 / 255, 0.30), (2 / 255, 0.31)], tolerance=0.02).flag
    assert check_large_eps(0.40, eps=0.5).flag
    assert "40.00%" in check_large_eps(0.40, eps=0.5).warning
    assert check_large_eps(0.0, eps=0.5) == (False, "")
    assert not check_large_eps(0.05, eps=0.5).flag
    assert check_black_box(0.40, 0.25).flag
    assert check_black_box(0.25, 0.40) == (False, "")
    logits = torch.randn(4, 10)
    assert check_deterministic(logits, logits.clone()) == (False, "")
    assert check_deterministic(logits, logits + 1e-6).flag


def test_run_diagnostics_flags(resnet, batch):
    x, y = batch
    flags, warnings = run_diagnostics(resnet, x, y, seed=0, steps=3, queries=50)
    assert flags == {"zero_gradients": False, "eps_not_monotonic": False, "black_box_stronger": False,
                     "shattered_gradients": False,
                     "large_eps_survives": False, "randomized": False} and warnings == []
    flags, warnings = run_diagnostics(SignNet().eval(), x, y, seed=0, steps=3, queries=50)
    assert flags["zero_gradients"]
    assert any("zero input gradient" in w for w in warnings)
    assert len(warnings) == sum(flags.values())


# --- suite files -----------------------------------------------------------------------------------------------

def test_shipped_suites_load():
    assert {"pgd-linf", "autoattack-linf", "square-linf", "digits-small"} <= set(attack_suite_names())
    demo = load_attack_suite("digits-small")
    assert [(s.name, s.norm, s.eps, s.steps) for s in demo] == [("pgd-linf", "Linf", 1 / 255, 10),
                                                               ("pgd-linf", "Linf", 2 / 255, 10)]
    assert [s.eps for s in load_attack_suite("pgd-linf")] == [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    assert load_attack_suite("autoattack-linf")[0].name == "autoattack"
    from robustlab.attacks.adapters import AUTOATTACK_STANDARD
    parts = load_attack_suite("autoattack-parts-linf")
    assert tuple(spec.name for spec in parts) == AUTOATTACK_STANDARD
    assert {(spec.eps, spec.steps, spec.queries) for spec in parts if spec.name in ("apgd-ce", "square-aa")} == \
        {(8 / 255, 100, 0), (8 / 255, 0, 5000)}  # AutoAttack's budgets
    assert load_attack_suite("square-linf")[0].queries == 5000
    assert load_attack_suite(Path(__file__).parents[1] / "attacks" / "digits-small.toml") == demo


@pytest.mark.parametrize("text, words", [
    ('[[attack]]\nname = "pgd-linf"\neps = "8/255"\nstpes = 10\n', ["line 4", "'stpes'", "unknown key"]),
    ('[[attack]]\nname = "pgd-linf"\neps = "8/255"\n\n[[attack]]\nname = "pgd-linf"\neps = ["1/255", "-2/255"]\n',
     ["line 5", "#2", "'-2/255'", "negative"]),
    ('[[attack]]\nname = "pgd"\neps = "8/255"\n', ["line 1", "unknown attack 'pgd'", "pgd-linf"]),
    ('[[attack]]\nname = "pgd-linf"\n', ["missing key 'eps'"]),
    ('[[attack]]\nname = "pgd-linf"\neps = "8/255"\nsteps = 0\n', ["steps", "got 0"]),
    ('[[attack]]\nname = "pgd-linf"\neps = 8/255\n', ["invalid TOML", "line 3"]),
    ('title = "x"\n', ["unknown top-level key 'title'"]),
    ('description = "nothing"\n', ["no [[attack]] entries"]),
    ('[[attack]]\nname = "fgsm"\neps = ["8/255", 0.0313725490196078431]\n', ["repeats an earlier attack"]),
])
def test_invalid_suite_names_file_line_and_reason(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RobustlabError) as e:
        load_attack_suite(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    assert all(w in msg for w in words), msg


def test_unknown_suite_name_and_missing_file():
    with pytest.raises(RobustlabError, match="did you mean pgd-linf.*known: .*digits-small"):
        load_attack_suite("pgd-lin")
    with pytest.raises(RobustlabError, match="does not exist"):
        load_attack_suite("nowhere/suite.toml")


class Shattered(nn.Module):
    """Adds 0.01 sin(500 x) to the input: barely changes the images, scrambles the input gradient's sign."""

    def __init__(self, model: nn.Module, amplitude: float = 0.01) -> None:
        super().__init__()
        self.model, self.amplitude = model, amplitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.amplitude * torch.sin(500 * x))


@pytest.fixture(scope="module")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    from robustlab.data import load_dataset
    images, labels = next(iter(load_dataset("digits", None).batches(64, 64)))
    return images.float() / 255 if images.dtype == torch.uint8 else images, labels


@pytest.mark.parametrize("name,wrap,flagged", [
    ("resnet18-digits", None, False), ("sdnet18-digits", None, False), ("resnet18-digits", "plain", False),
    ("resnet18-digits", "shattered", True), ("sdnet18-digits", "shattered", True),
    ("resnet18-digits", "plain-shattered-amplitude-0", False),
])
def test_shattered_gradients_are_flagged_and_sound_ones_are_not(name, wrap, flagged, digits_batch):
    from robustlab.attacks.diagnostics import check_gradient_coherence, gradient_sign_agreement
    model = robustlab.load_model(f"zoo:{name}")
    if wrap == "plain":
        model = nn.Sequential(model).eval()
    elif wrap is not None:
        model = Shattered(model, amplitude=0.0 if wrap.endswith("0") else 0.01).eval()
    x, y = digits_batch
    agreements = [(d, gradient_sign_agreement(model, x, y, d, seed=0)) for d in (1 / 255, 2 / 255)]
    flag, warning = check_gradient_coherence(agreements)
    assert flag == flagged, agreements
    assert ("shattered" in warning) == flagged


def test_a_sign_model_is_not_called_shattered_but_zero_gradient(batch):
    from robustlab.attacks.diagnostics import gradient_sign_agreement
    x, y = batch
    assert math.isnan(gradient_sign_agreement(SignNet().eval(), x, y, 2 / 255, seed=0))


class Rounded(nn.Module):
    """Quantizes the input to 8 bits first: zero input gradient almost everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)


def test_rounded_input_and_sign_step_models_stay_flagged(digits_batch):
    model = robustlab.load_model("zoo:resnet18-digits")
    x, y = digits_batch
    flags, _ = run_diagnostics(Rounded(model).eval(), x[:16], y[:16], seed=0, steps=3, queries=20)
    assert flags["zero_gradients"]
    assert not flags["shattered_gradients"]
    flags, _ = run_diagnostics(SignNet().eval(), torch.rand(8, 3, 32, 32), torch.arange(8), seed=0, steps=3,
                               queries=20)
    assert flags["zero_gradients"]
