"""The CSC layer against the dense-matrix reference of design.md's formulas."""
from __future__ import annotations

import pytest
import torch

import robustlab
from robustlab.errors import RobustlabError
from robustlab.models import CSCConv2d, csc_layer
from robustlab.models import csc as csc_module
from tests.helpers import tiny_model
from tests.numerics import assert_codes_close, assert_residuals_close
from tests.reference import dense_csc, dense_step, unit_atoms

pytestmark = pytest.mark.numerics  # two kernel paths compared: also run under other kernels in .ci/run

CASES = [
    dict(in_channels=3, out_channels=8, kernel_size=3, stride=1, padding=1),
    dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1),
    dict(in_channels=2, out_channels=6, kernel_size=3, stride=1, padding=1, n_steps=1),
    dict(in_channels=2, out_channels=6, kernel_size=3, stride=1, padding=1, n_steps=4, mu=0.3),
    dict(in_channels=2, out_channels=6, kernel_size=3, stride=2, padding=1, non_negative=False, n_steps=3),
    dict(in_channels=2, out_channels=6, kernel_size=3, stride=1, padding=0, w_norm=False),
    dict(in_channels=2, out_channels=6, kernel_size=3, stride=1, padding=1, n_dict=2),
    dict(in_channels=2, out_channels=4, kernel_size=5, stride=2, padding=2, lmbda=0.5),
]


def make_layer(**kw) -> CSCConv2d:
    torch.manual_seed(0)
    layer = CSCConv2d(**kw).double()
    layer.record_residual = True
    return layer


@pytest.mark.parametrize("grad", [True, False], ids=["conv_transpose2d", "patches"])  # CSCConv2d._decode
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_layer_matches_dense_reference(kw, grad):
    layer = make_layer(**kw)
    x = torch.rand(3, kw["in_channels"], 8, 8, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        assert layer._by_patches(x, layer.dn.weight) != grad
        code = layer(x)
    ref_kw = {k: v for k, v in kw.items() if k not in ("in_channels", "out_channels", "kernel_size")}
    # the step is checked against the exact eigenvalue separately; here both use the layer's
    ref_code, ref_res = dense_csc(x, layer.dn.weight.detach(), step=float(layer.dn.step_size),
                                  **{"lmbda": 0.1, **ref_kw})
    assert code.shape == ref_code.shape
    assert torch.allclose(code, ref_code, rtol=1e-4, atol=1e-7), (code - ref_code).abs().max()
    assert torch.allclose(layer.residual, ref_res, rtol=1e-4)
    assert (code > 0).any(), "the test input must give a non-trivial code"


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_solve_at_equals_a_forward_per_lambda(kw, chunked, monkeypatch):
    layer = make_layer(**kw).float()
    if chunked:  # two (image, lambda) pairs' code maps per chunk
        pair_bytes = layer.out_channels * 64 // layer.stride ** 2 * 4
        monkeypatch.setattr(csc_module, "SOLVE_CHUNK_BYTES", (2 * pair_bytes, 2 * pair_bytes))
    x = torch.rand(5, kw["in_channels"], 8, 8)
    grid = [0.0, 0.05, 0.1, 0.3, 1.0]
    n, size = len(x), len(grid)
    solved = list(layer.solve_at(x, grid)(torch.arange(n).repeat(size), torch.arange(size).repeat_interleave(n)))
    assert len(solved) == (n * size + 1) // 2 if chunked else len(solved) == 1
    residuals = torch.cat([r for r, _ in solved]).view(size, n)
    codes = torch.cat([c for _, c in solved]).view(size, n, *solved[0][1].shape[1:])
    for k, lam in enumerate(grid):
        layer.lmbda = lam
        with torch.no_grad():  # an attack's forward decodes by conv_transpose2d (see CSCConv2d._decode)
            code = layer(x)
        # other kernels (decode, batch blocking) than the forward's: equal to float rounding (tests/numerics.py)
        assert_residuals_close(residuals[k], layer.residual, layer)
        assert_codes_close(codes[k], code, layer)
    assert len(set(residuals[:, 0].tolist())) == len(grid), "every lambda must give its own residual"


def test_solve_at_asked_for_no_pairs_yields_no_residuals():
    layer = make_layer(**CASES[0]).float()
    x = torch.rand(3, CASES[0]["in_channels"], 8, 8)
    none = torch.empty(0, dtype=torch.long)
    assert sum(len(r) for r, _ in layer.solve_at(x, [0.1, 0.2])(none, none)) == 0


@pytest.mark.parametrize("k,stride,padding,size", [(3, 1, 1, 8), (3, 2, 1, 9), (5, 2, 2, 10), (7, 2, 3, 15),
                                                    (3, 1, 0, 7), (1, 1, 0, 6)])
@pytest.mark.parametrize("c_in", [1, 3])
def test_patch_space_decode_equals_conv_transpose2d(k, stride, padding, size, c_in):
    torch.manual_seed(0)
    weight = torch.randn(5, c_in, k, k, dtype=torch.float64)
    x = torch.randn(2, c_in, size, size + 1, dtype=torch.float64)
    code = torch.randn(*torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding).shape,
                       dtype=torch.float64)
    op = csc_module._adjoint_output_padding(x.shape[-2:], code.shape[-2:], k, stride, padding)
    expected = torch.nn.functional.conv_transpose2d(code, weight, stride=stride, padding=padding, output_padding=op)
    got = csc_module.transpose_by_patches(code, weight, stride=stride, padding=padding, out_hw=x.shape[-2:])
    assert got.shape == x.shape
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,size", [(3, 8, 3, 2, 1, 8), (3, 16, 3, 1, 1, 10),
                                                               (4, 4, 3, 1, 1, 9), (1, 6, 5, 2, 2, 12),
                                                               (3, 8, 7, 2, 3, 14)])
def test_step_size_is_the_converged_largest_eigenvalue(c_in, c_out, k, stride, padding, size):
    layer = make_layer(in_channels=c_in, out_channels=c_out, kernel_size=k, stride=stride, padding=padding)
    layer(torch.rand(1, c_in, size, size, dtype=torch.float64))
    expected = dense_step(unit_atoms(layer.dn.weight.detach()), (c_in, size, size), stride, padding)
    assert float(layer.dn.step_size) == pytest.approx(expected, rel=1e-6)


def test_step_size_computed_once_per_weight_change(monkeypatch):
    calls = []
    real = csc_module.largest_eigenvalue
    monkeypatch.setattr(csc_module, "largest_eigenvalue", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = CSCConv2d(3, 8, 3, 1, 1)
    x = torch.rand(4, 3, 8, 8)
    for _ in range(3):
        layer(x)
    assert len(calls) == 1, "the step must not be recomputed per batch"
    layer(torch.rand(4, 3, 10, 10))
    assert len(calls) == 2, "a new input size needs its own step"
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.rand(4, 3, 10, 10)).sum().backward()
    opt.step()
    layer(torch.rand(4, 3, 10, 10))
    assert len(calls) == 3, "a weight update must refresh the step"


def test_loaded_step_size_is_used_and_survives_device_moves(monkeypatch):
    src = CSCConv2d(3, 8, 3, 1, 1)
    sd = src.state_dict()
    sd["dn.step_size"] = torch.tensor(0.0123)  # official files may store a 0-d tensor
    layer = CSCConv2d(3, 8, 3, 1, 1)
    layer.load_state_dict(sd)
    monkeypatch.setattr(csc_module, "largest_eigenvalue", lambda *a, **k: pytest.fail("recomputed a loaded step"))
    layer.to(torch.float64)
    layer(torch.rand(2, 3, 12, 12, dtype=torch.float64))
    assert float(layer.dn.step_size) == pytest.approx(0.0123)


def test_gradients_reach_the_input():
    layer = make_layer(in_channels=3, out_channels=8, kernel_size=3, stride=1, padding=1)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_lambda_changes_threshold_output_and_residual():
    model = tiny_model("sdnet18")
    x = torch.rand(4, 3, 32, 32)
    outs, residuals, sparsity = [], [], []
    first = csc_layer(model, 0)
    hook = first.register_forward_hook(lambda m, i, o: sparsity.append(float((o > 0).float().mean())))
    for lam in (0.1, 0.5, 1.0):
        robustlab.set_lambda(model, lam)
        with torch.no_grad():
            outs.append(model(x))
        residuals.append(robustlab.last_residual(model).clone())
    hook.remove()
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])
    assert (residuals[0] < residuals[1]).all()
    assert (residuals[1] < residuals[2]).all()
    assert sparsity[0] > sparsity[1] > sparsity[2]
    assert residuals[0].shape == (4,)


def test_lambda_api_errors_are_clear():
    model = tiny_model("sdnet18")
    with pytest.raises(RobustlabError, match="finite number"):
        robustlab.set_lambda(model, float("nan"))
    with pytest.raises(RobustlabError, match="does not exist"):
        robustlab.set_lambda(model, 0.2, layer=5)
    with pytest.raises(RobustlabError, match="no residual yet"):
        robustlab.last_residual(model)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3))
    with pytest.raises(RobustlabError, match="no CSC layer"):
        robustlab.set_lambda(plain, 0.2)


def test_a_presolved_output_is_used_inside_its_block_only():
    from robustlab.models.csc import Presolved
    layer = make_layer(in_channels=3, out_channels=8, kernel_size=3, stride=1, padding=1)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        solved = layer(x)
    stand_in = Presolved(torch.full_like(solved, 7.0), torch.tensor([1.0, 2.0], dtype=torch.float64))
    with torch.no_grad(), layer.presolved(stand_in):
        assert torch.equal(layer(x), stand_in.code)
        assert torch.equal(layer.residual, stand_in.residual)
        with pytest.raises(RobustlabError, match="presolved code has 2 images but the batch has 1"):
            layer(x[:1])
    with torch.no_grad():
        assert torch.equal(layer(x), solved), "outside the block the layer solves again"
