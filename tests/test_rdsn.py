"""The random depthwise signed network: its definition, the fitted linear head, checkpoints and evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustlab.checkpoints import load_model, save_checkpoint
from robustlab.cli import main
from robustlab.data import ArrayImageSet, load_dataset
from robustlab.errors import RobustlabError
from robustlab.fit_rdsn import RDSNConfig, fit_rdsn, knn_precision, topk_accuracy
from robustlab.models import ModelConfig, RobustModel, build_net
from robustlab.models.rdsn import RDSN
from robustlab.safe_loading import read_checkpoint

pytestmark = pytest.mark.numerics  # two kernel paths compared: also run under other kernels in .ci/run


def reference_features(net: RDSN, x: torch.Tensor) -> torch.Tensor:
    """Block by block in float64, each unit the sign of a patch's projection on its filter plus the offset."""
    x = x.double()
    k, pad = net.kernel_size, net.kernel_size // 2
    feats = []
    for j in range(net.k):
        h = x
        for i in range(net.depth):
            if i > 0 and net.pool == "avg":
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            n, c, height, width = h.shape
            patches = F.unfold(h, k, padding=pad)  # (n, c*k*k, positions)
            w = getattr(net, f"weight{i}")[j].double().reshape(-1)
            proj = torch.einsum("npl,p->nl", patches, w) + float(getattr(net, f"offset{i}")[j])
            h = torch.sign(proj).reshape(n, 1, height, width)
        feats.append(h.mean(dim=(2, 3)))
    return torch.cat(feats, dim=1)


@pytest.mark.parametrize("pool", ["none", "avg"])
def test_features_match_a_block_by_block_reference(pool: str) -> None:
    net = RDSN(num_classes=3, k=6, depth=3, pool=pool, in_channels=3, seed=4)
    x = torch.randn(5, 3, 12, 12)
    # float32 against float64: equal up to the rounding of the means (one flipped sign would move a feature by
    # 2/positions, far above the tolerance)
    assert torch.allclose(net.features(x).double(), reference_features(net, x), rtol=0, atol=1e-6)


def test_features_do_not_depend_on_the_chunk_size() -> None:
    net = RDSN(num_classes=3, k=40, depth=2)
    x = torch.randn(4, 3, 16, 16)
    whole = net.features(x)
    net.chunk = 7
    # a chunk's convolution has other shapes, so other kernels: a pre-activation within rounding of 0 may take the
    # other sign there, moving one feature (a mean of +-1 over 16 x 16 positions) by 2/256. Allow one such flip.
    torch.testing.assert_close(net.features(x), whole, rtol=0, atol=2 / 256 + 1e-6)


def test_random_tensors_come_from_the_seed_and_are_not_stored() -> None:
    a, b, c = (RDSN(num_classes=3, k=8, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.weight0, b.weight0)
    assert torch.equal(a.offset2, b.offset2)
    assert not torch.equal(a.weight0, c.weight0)
    assert sorted(a.state_dict()) == ["feature_mean", "feature_std", "head.bias", "head.weight"]
    assert torch.allclose(a.weight1.flatten(1).norm(dim=1), torch.ones(8))


def test_sign_network_has_no_input_gradient() -> None:
    net = RDSN(num_classes=3, k=8, depth=2)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None
    assert torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"depth": 0}, {"kernel_size": 2}, {"pool": "mean"}])
def test_bad_configuration_is_refused(kwargs: dict) -> None:
    with pytest.raises(RobustlabError, match="rdsn"):
        RDSN(num_classes=3, **kwargs)


def test_topk_accuracy_and_knn_precision_on_hand_made_cases() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    train = np.array([[0.0], [0.1], [1.0], [1.1]])
    train_labels = np.array([0, 0, 1, 0])
    # query at 0.05: neighbours 0.0 and 0.1 (both label 0); query at 1.05: 1.0 (1) and 1.1 (0)
    assert knn_precision(train, train_labels, np.array([[0.05], [1.05]]), np.array([0, 1]), 2) == pytest.approx(0.75)


def assert_reproduces(model: RobustModel, metrics: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's top-1 and top-2 on the digits test split equal the recorded metrics; returns images, logits."""
    test = load_dataset("digits")
    images, labels = next(test.batches(len(test)))
    with torch.no_grad():
        logits = model(images.float() / 255)
    assert topk_accuracy(logits, labels, 1) == pytest.approx(metrics["top1"])
    assert topk_accuracy(logits, labels, 2) == pytest.approx(metrics["top2"])
    return images, logits


@pytest.fixture(scope="module")
def fitted() -> tuple[RobustModel, dict]:
    return fit_rdsn(RDSNConfig(dataset="digits", k=64, depth=2, pool="avg"), data_dir=None,
                    device=torch.device("cpu"), progress=lambda it, **_: it)


def test_fit_learns_digits_and_the_head_reproduces_its_metrics(fitted, tmp_path: Path) -> None:
    model, metrics = fitted
    assert metrics["top1"] > 0.8
    assert metrics["top2"] >= metrics["top1"]
    assert 0.5 < metrics["knn_precision@10"] <= 1
    images, logits = assert_reproduces(model, metrics)
    path = tmp_path / "rdsn.pt"
    save_checkpoint(model, path)
    payload = read_checkpoint(path)
    assert payload["config"]["arch_kwargs"]["seed"] == 0
    assert "weight0" not in payload["state_dict"]
    with torch.no_grad():
        assert torch.equal(load_model(path)(images.float() / 255), logits)


def test_binary_problem_gets_one_score_per_class(monkeypatch) -> None:
    digits = {split: load_dataset("digits", split=split) for split in ("train", "test")}

    def two_classes(_name, _dir, split="test"):
        d = digits[split]
        keep = d.labels < 2
        return ArrayImageSet(d.images[keep], d.labels[keep], name="digits", split=split, num_classes=2)

    monkeypatch.setattr("robustlab.fit_rdsn.load_dataset", two_classes)
    model, metrics = fit_rdsn(RDSNConfig(dataset="digits", k=16, depth=1), data_dir=None,
                              device=torch.device("cpu"), progress=lambda it, **_: it)
    assert model.net.head.out_features == 2
    assert metrics["top1"] > 0.9
    assert metrics["top2"] == 1.0


def test_fit_rdsn_cli_then_eval_gives_the_same_accuracy(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "r.pt"
    assert main(["fit-rdsn", "--dataset", "digits", "--k", "32", "--depth", "2", "--out", str(ckpt), "--json",
                 "--quiet", "--device", "cpu"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert main(["eval", "--ckpt", str(ckpt), "--dataset", "digits", "--out", str(tmp_path / "run"), "--quiet",
                 "--json", "--device", "cpu"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["arch"] == "rdsn"
    assert row["lambda_mode"] == "n.a."
    assert row["accuracy"] == pytest.approx(fit["top1"])


def test_gradient_attacks_on_rdsn_are_flagged() -> None:
    from robustlab.attacks import run_diagnostics
    cfg = ModelConfig(arch="rdsn", num_classes=10, input_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                      arch_kwargs={"k": 16, "depth": 2})
    model = RobustModel(build_net(cfg), cfg).eval()
    torch.manual_seed(0)
    flags, warnings = run_diagnostics(model, torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,)), seed=0,
                                      steps=2, queries=5)
    assert flags["zero_gradients"]
    assert any("zero input gradient" in w for w in warnings)


def test_shipped_rdsn_checkpoint_reproduces_its_recorded_accuracy() -> None:
    payload = read_checkpoint(load_model("zoo:rdsn-digits").checkpoint_path)
    assert_reproduces(load_model("zoo:rdsn-digits"), payload["rdsn_fit"])
