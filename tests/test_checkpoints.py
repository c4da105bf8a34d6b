"""Official SDNet/ResNet layouts, robustlab's own format, and safe loading."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

import robustlab
from robustlab.errors import RobustlabError
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD
from robustlab.models.sdnet import from_official_keys, infer_config
from robustlab.safe_loading import plain_state_dict
from tests.reference import official_sdnet18_forward, official_sdnet18_state_dict


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module", "scalar_step"])
def test_official_sdnet18_matches_design_definition(tmp_path, wrap):
    sd = official_sdnet18_state_dict(num_classes=10)
    stored = dict(sd)
    if wrap == "module":
        stored = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 200, "best_acc": 95.3}
    elif wrap == "state_dict":
        stored = {"state_dict": sd}
    elif wrap == "scalar_step":
        stored["layer0.0.dn.step_size"] = sd["layer0.0.dn.step_size"].reshape(())
    path = _save(stored, tmp_path / "model_best.pth.tar")
    model = robustlab.load_model(path)
    assert model.config.arch == "sdnet18"
    assert model.config.num_classes == 10
    assert not model.training
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for lam in (0.1, 0.5, 1.0):
        robustlab.set_lambda(model, lam)
        with torch.no_grad():
            got = model(x)
        want = official_sdnet18_forward(x, sd, lmbda=lam, mean=CIFAR_MEAN, std=CIFAR_STD)
        rel = float((got - want).norm() / want.norm())
        assert rel < 1e-4, f"lambda {lam}: relative error {rel}"


def test_logits_depend_on_lambda_through_the_stem(tmp_path):
    model = robustlab.load_model(_save(official_sdnet18_state_dict(), tmp_path / "m.pt"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x)
        robustlab.set_lambda(model, 1.0)
        b = model(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kw,arch", [
    (dict(all_layers=True), "sdnet18-all"),
    (dict(all_layers=True, shortcut=False), "sdnet18-all-noshortcut"),
    (dict(sparse_stem=False), "resnet18"),
    (dict(num_classes=100), "sdnet18"),
])
def test_official_layouts_load_with_inferred_arch(tmp_path, kw, arch):
    sd = official_sdnet18_state_dict(**kw)
    model = robustlab.load_model(_save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "m.pt"))
    assert model.config.arch == arch
    assert model.config.num_classes == kw.get("num_classes", 10)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, kw.get("num_classes", 10))
    n_csc = len(robustlab.models.csc_layers(model))
    assert n_csc == (17 if kw.get("all_layers") else 0 if kw.get("sparse_stem") is False else 1)


def test_imagenet_stem_and_normalization_are_inferred():
    sd = from_official_keys(plain_state_dict(official_sdnet18_state_dict(stem="imagenet", num_classes=1000), "x"))
    cfg = infer_config(sd)
    assert cfg.arch == "sdnet18"
    assert cfg.input_size == 224
    assert cfg.dataset == "imagenet"
    assert cfg.mean == (0.485, 0.456, 0.406)
    assert cfg.arch_kwargs["stem"] == "imagenet"


def test_robustlab_format_round_trip(tmp_path):
    model = robustlab.load_model(_save(official_sdnet18_state_dict(), tmp_path / "official.pt"))
    robustlab.set_lambda(model, 0.3)
    robustlab.save_checkpoint(model, tmp_path / "ours.pt")
    raw = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert raw["format"] == "robustlab"
    assert raw["format_version"] == 1
    assert raw["config"]["mean"] == list(CIFAR_MEAN)
    again = robustlab.load_model(tmp_path / "ours.pt")
    robustlab.set_lambda(again, 0.3)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.config == model.config


def test_a_model_loaded_inside_inference_mode_works():
    with torch.inference_mode():  # its weights were inference tensors, whose versions the CSC step cache reads
        model = robustlab.load_model("zoo:sdnet18-digits")
        x = torch.rand(2, 3, 32, 32)
        assert torch.equal(model(x), model(x))
    robustlab.set_lambda(model, 0.2)
    assert model(x).requires_grad, "and it trains or is attacked outside inference mode as any other"


def test_wrong_arch_names_keys_and_the_likely_arch(tmp_path):
    path = _save(official_sdnet18_state_dict(), tmp_path / "m.pt")
    with pytest.raises(RobustlabError) as err:
        robustlab.load_model(path, arch="resnet18")
    msg = str(err.value)
    assert "missing keys layer0.0.weight" in msg
    assert "unexpected keys layer0.0.dn" in msg
    assert "--arch sdnet18" in msg
    assert "\n" not in msg


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(RobustlabError, match="refusing to load"):
        robustlab.load_model(path)
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(RobustlabError, match="refusing to load"):
        robustlab.load_model(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path):
    good = _save(official_sdnet18_state_dict(), tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RobustlabError, match="truncated or not a PyTorch checkpoint"):
        robustlab.load_model(tmp_path / "cut.pt")
    (tmp_path / "notes.txt").write_text("hello, not a model\n")
    with pytest.raises(RobustlabError, match="not a PyTorch checkpoint"):
        robustlab.load_model(tmp_path / "notes.txt")
    with pytest.raises(RobustlabError, match="does not exist"):
        robustlab.load_model(tmp_path / "missing.pt")
    with pytest.raises(RobustlabError, match="holds no state_dict"):
        robustlab.load_model(_save({"epoch": 3}, tmp_path / "empty.pt"))
    with pytest.raises(RobustlabError, match="unknown zoo checkpoint"):
        robustlab.load_model("zoo:nope")


def test_unknown_layout_needs_arch_and_torchvision_arch_works(tmp_path):
    import torchvision
    net = torchvision.models.resnet18(num_classes=7)
    path = _save(net.state_dict(), tmp_path / "tv.pt")
    with pytest.raises(RobustlabError, match="pass --arch"):
        robustlab.load_model(path)
    model = robustlab.load_model(path, arch="torchvision:resnet18")
    assert model.config.num_classes == 7
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net.eval()((x - model.mean) / model.std))


def test_robustbench_names_are_checked_and_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_ROBUSTBENCH_DIR", str(tmp_path))
    with pytest.raises(RobustlabError, match="needs a download"):
        robustlab.load_model("robustbench:Standard")
    with pytest.raises(RobustlabError, match="did you mean"):
        robustlab.load_model("robustbench:Standrd")


def test_saved_step_sizes_belong_to_the_saved_weights(tmp_path):
    from robustlab.models.csc import largest_eigenvalue
    from tests.helpers import tiny_model
    model = tiny_model("sdnet18")  # never run: its step_size buffer is still the placeholder
    robustlab.save_checkpoint(model, tmp_path / "m.pt")
    layer = robustlab.models.csc_layer(robustlab.load_model(tmp_path / "m.pt"))
    expected = 0.9 / largest_eigenvalue(layer.dn.atoms().detach(), (3, 32, 32), stride=1, padding=1)
    assert float(layer.dn.step_size) == pytest.approx(expected, rel=1e-6)
