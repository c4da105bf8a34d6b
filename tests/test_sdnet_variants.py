"""Every architecture robustlab loads from official checkpoints, against tests/reference.py's official_forward
(written from design.md), and the official experiment configuration that carries what the keys cannot show."""
from __future__ import annotations

import pytest
import torch
import yaml

import robustlab
from robustlab.errors import RobustlabError
from robustlab.models import csc_layers
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from tests.reference import official_forward, official_sdnet18_state_dict

pytestmark = pytest.mark.numerics  # two kernel paths compared: also run under other kernels in .ci/run

VARIANTS = [  # (id, state-dict arguments, CSC settings written to the official config)
    ("sdnet18", dict(), dict()),
    ("sdnet34", dict(depth=34), dict()),
    ("sdnet18-all", dict(all_layers=True), dict()),
    ("sdnet18-all-noshortcut", dict(all_layers=True, shortcut=False), dict()),
    ("sdnet34-all-noshortcut", dict(all_layers=True, shortcut=False, depth=34), dict()),
    ("sdnet34-all", dict(all_layers=True, depth=34), dict(n_steps=3)),
    ("sdnet18-imagenet", dict(stem="imagenet", num_classes=1000), dict()),
    ("sdnet18-all-imagenet", dict(stem="imagenet", all_layers=True, num_classes=1000), dict()),
    ("sdnet18-all-noshortcut-imagenet", dict(stem="imagenet", all_layers=True, shortcut=False, num_classes=1000),
     dict(n_steps=3)),
    ("sdnet18-ndict2", dict(n_dict=2), dict()),
    ("sdnet18-all-ndict2-3steps", dict(all_layers=True, n_dict=2), dict(n_steps=3, mu=0.2)),
    ("sdnet18-3steps-signed", dict(), dict(n_steps=3, non_negative=False, lmbda=0.3)),
    ("resnet18", dict(sparse_stem=False), dict()),
    ("resnet18-imagenet", dict(sparse_stem=False, stem="imagenet", num_classes=1000), dict()),
]
YAML_KEYS = {"n_steps": "NUM_LAYERS", "mu": "MU", "lmbda": "LAMBDA", "non_negative": "NONEGATIVE"}


def official_yaml(path, sd_kw: dict, csc: dict) -> None:
    """An official experiment configuration (experiments/*.yaml layout) for these weights."""
    sparse = sd_kw.get("sparse_stem", True)
    name = ("sdnet" if sparse else "resnet") + str(sd_kw.get("depth", 18)) + ("_all" if sd_kw.get("all_layers") else "")
    model = {"NAME": name, "NUM_CLASSES": sd_kw.get("num_classes", 10), "SHORTCUT": sd_kw.get("shortcut", True),
             "EXPANSION_FACTOR": sd_kw.get("n_dict", 1)}
    model.update({YAML_KEYS[k]: ([v] if k == "lmbda" else v) for k, v in csc.items()})
    path.write_text(yaml.safe_dump({"MODEL": model, "DATASET": {"DATASET": "cifar10"}}))


def centred(t: torch.Tensor) -> torch.Tensor:
    """Remove the batch mean: on random weights the features barely vary between images."""
    return t - t.mean(dim=0, keepdim=True)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((centred(got) - centred(want)).norm() / centred(want).norm())


def double(sd: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("name,sd_kw,csc", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_variant_matches_reference_logits_and_codes(tmp_path, name, sd_kw, csc):
    imagenet = sd_kw.get("stem") == "imagenet"
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (CIFAR_MEAN, CIFAR_STD)
    size = 64 if imagenet else 32
    settings = {"lmbda": 0.1, "mu": 0.0, "n_steps": 2, "non_negative": True, "w_norm": True,
                "n_dict": sd_kw.get("n_dict", 1), **csc}
    arch = dict(mean=mean, std=std, depth=sd_kw.get("depth", 18), stem=sd_kw.get("stem", "cifar"),
                all_layers=sd_kw.get("all_layers", False), shortcut=sd_kw.get("shortcut", True), **settings)
    sd = double(official_sdnet18_state_dict(**sd_kw))
    fit = torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    official_forward(fit, sd, fit_bn=torch.Generator().manual_seed(3), **arch)  # BatchNorm statistics that matter
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "model_best.pth.tar")
    official_yaml(tmp_path / "model_best.yaml", sd_kw, csc)  # found beside the checkpoint
    model = robustlab.load_model(tmp_path / "model_best.pth.tar").double()
    x = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got_codes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: got_codes.append(out)) for m in csc_layers(model)]
    with torch.no_grad():
        got = model(x)
    for h in hooks:
        h.remove()
    want_codes: list = []
    want = official_forward(x, double(sd), codes=want_codes, **arch)
    assert centred(want).norm() > 0.05 * want.norm(), "the reference's logits barely vary between images"
    assert rel(got, want) < 1e-9, f"logits: relative error {rel(got, want):.2e}"
    assert len(got_codes) == len(want_codes)
    for i, (g, w) in enumerate(zip(got_codes, want_codes)):
        assert g.shape == w.shape, f"CSC layer {i}: relative error {rel(g, w):.2e}"
        assert rel(g, w) < 1e-9, f"CSC layer {i}: relative error {rel(g, w):.2e}"


def _official(tmp_path, csc: dict | None, sd_kw: dict | None = None):
    sd_kw = sd_kw or {}
    sd = official_sdnet18_state_dict(**sd_kw)
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    if csc is not None:
        official_yaml(tmp_path / "exp.yaml", sd_kw, csc)
    return path


def test_without_configuration_the_defaults_are_assumed_and_said(tmp_path):
    model = robustlab.load_model(_official(tmp_path, None))
    assert model.csc_settings.source == "defaults"
    assert model.csc_settings.assumed == {"lmbda": 0.1, "mu": 0.0, "n_steps": 2, "non_negative": True,
                                          "w_norm": True}
    assert "n_steps=2" in model.csc_settings.notice("m")
    assert "--official-config" in model.csc_settings.notice("m")
    assert all(m.n_steps == 2 for m in csc_layers(model))


def test_official_config_sets_hidden_settings_and_robustlab_format_keeps_them(tmp_path):
    path = _official(tmp_path, dict(n_steps=3, mu=0.1, lmbda=0.2))
    model = robustlab.load_model(path, official_config=tmp_path / "exp.yaml")
    layer = csc_layers(model)[0]
    assert (layer.n_steps, layer.mu, layer.lmbda) == (3, 0.1, 0.2)
    assert model.csc_settings.source.startswith("official config")
    assert not model.csc_settings.assumed
    robustlab.save_checkpoint(model, tmp_path / "own.pt")
    again = robustlab.load_model(tmp_path / "own.pt")
    assert again.config.arch_kwargs["n_steps"] == 3
    assert csc_layers(again)[0].n_steps == 3
    assert again.csc_settings.source == "checkpoint"
    assert not again.csc_settings.assumed


def test_three_step_checkpoint_differs_from_its_two_step_reading(tmp_path):
    path = _official(tmp_path, dict(n_steps=3))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        right = robustlab.load_model(path, official_config=tmp_path / "exp.yaml")(x)
        assumed = robustlab.load_model(path)(x)
    assert rel(assumed, right) > 1e-4


@pytest.mark.parametrize("model,fragment", [
    ({"NAME": "sdnet18_all"}, "MODEL.NAME sdnet18_all"),
    ({"NAME": "sdnet18", "NUM_CLASSES": 100}, "MODEL.NUM_CLASSES 100"),
    ({"NAME": "sdnet18", "EXPANSION_FACTOR": 2}, "MODEL.EXPANSION_FACTOR 2"),
    ({"SQUARE_NOISE": False}, "MODEL.SQUARE_NOISE False is not supported"),
    ({"POOLING": True}, "MODEL.POOLING True is not supported"),
    ({"NUM_LAYERS": 0}, "MODEL.NUM_LAYERS is 0"),
    ({"MU": "x"}, "MODEL.MU is 'x'"),
    ({"NAME": "vgg"}, "MODEL.NAME is 'vgg'"),
])
def test_a_configuration_that_does_not_fit_is_refused(tmp_path, model, fragment):
    path = _official(tmp_path, None)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"MODEL": model}))
    with pytest.raises(RobustlabError, match=fragment.replace("(", r"\(")) as e:
        robustlab.load_model(path, official_config=tmp_path / "bad.yaml")
    assert "\n" not in str(e.value)


def test_official_config_refused_for_robustlab_format(tmp_path):
    (tmp_path / "c.yaml").write_text("MODEL:\n  NUM_LAYERS: 3\n")
    with pytest.raises(RobustlabError, match="robustlab's format"):
        robustlab.load_model("zoo:sdnet18-digits", official_config=tmp_path / "c.yaml")


def test_eval_says_and_records_which_settings_were_assumed(tmp_path, capsys, monkeypatch):
    import json

    from robustlab.cli import main
    from tests.helpers import write_cifar
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    data = write_cifar(tmp_path / "data", n_test=8)
    path = _official(tmp_path, None)
    assert main(["eval", "--ckpt", str(path), "--dataset", "cifar10", "--data-dir", str(data), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    notice = [line for line in capsys.readouterr().err.splitlines() if "assumed the official defaults" in line]
    assert len(notice) == 1
    assert "n_steps=2" in notice[0]
    models = json.loads((tmp_path / "run" / "manifest.json").read_text())["models"]
    assert models["m"]["csc_settings"]["source"] == "defaults"
    assert models["m"]["csc_settings"]["assumed_defaults"]["n_steps"] == 2
    official_yaml(tmp_path / "m.yaml", {}, dict(n_steps=3))  # beside the checkpoint: read, nothing assumed
    assert main(["eval", "--ckpt", str(path), "--dataset", "cifar10", "--data-dir", str(data), "--out",
                 str(tmp_path / "run2"), "--quiet"]) == 0
    assert "assumed the official defaults" not in capsys.readouterr().err
    settings = json.loads((tmp_path / "run2" / "manifest.json").read_text())["models"]["m"]["csc_settings"]
    assert settings["source"].startswith("official config")
    assert settings["assumed_defaults"] == {}
