"""The Python entry: robustlab.evaluate on a module defined here, load_results and summarize, and the README's
example run as written."""
from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import robustlab
from robustlab.checkpoints import model_digest
from robustlab.cli import main
from robustlab.errors import RobustlabError

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(dataset="fashion-mnist", n=48, batch_size=16, corruptions="gaussian_noise", severities=[3],
           attack="pgd-linf", eps=["2/255"], steps=3, progress=False)
CLI = ["eval", "--dataset", "fashion-mnist", "--n", "48", "--batch-size", "16", "--corruptions", "gaussian_noise",
       "--severities", "3", "--attack", "pgd-linf", "--eps", "2/255", "--steps", "3", "--quiet"]
COUNTED = ["corruption", "severity", "attack", "eps", "n", "correct"]


class PixelNet(nn.Module):
    """A user's own module, as in a notebook: it normalizes its pixels itself."""

    def __init__(self, inner: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - self.mean) / self.std)


def _zoo_net() -> tuple[nn.Module, tuple, tuple]:
    model = robustlab.load_model("zoo:resnet18-fashion")
    return model.net, model.config.mean, model.config.std


def _counts(df: pd.DataFrame) -> pd.DataFrame:
    out = df[COUNTED].copy()
    for column in ("severity", "eps", "n", "correct"):
        out[column] = out[column].astype(float).round(8)
    return out.sort_values(["corruption", "attack"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def cli_rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*CLI, "--ckpt", "zoo:resnet18-fashion", "--out", str(out)]) == 0
    return pd.read_csv(out / "results.csv")


def test_a_module_defined_here_gives_the_numbers_of_robustlab_eval_on_its_weights(cli_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the temporary run directory goes
    monkeypatch.chdir(tmp_path)
    inner, mean, std = _zoo_net()
    net = PixelNet(inner, mean, std).eval()
    df = robustlab.evaluate(net, **RUN)
    assert len(df) == 3
    assert set(df["model"]) == {"PixelNet"}
    assert set(df["checkpoint_sha256"]) == {model_digest(robustlab.api.as_robust_model(
        net, robustlab.data.load_dataset("fashion-mnist"), dataset="fashion-mnist"))}
    pd.testing.assert_frame_equal(_counts(df), _counts(cli_rows))
    assert list(tmp_path.iterdir()) == [], "nothing is left outside the temporary run directory"


def test_a_module_that_expects_normalized_input_takes_mean_and_std(cli_rows):
    inner, mean, std = _zoo_net()
    df = robustlab.evaluate(inner.eval(), mean=mean, std=std, name="normalized", **RUN)
    assert set(df["model"]) == {"normalized"}
    pd.testing.assert_frame_equal(_counts(df), _counts(cli_rows))


def test_a_checkpoint_with_out_is_an_ordinary_resumable_run(cli_rows, tmp_path):
    out = tmp_path / "run"
    df = robustlab.evaluate("zoo:resnet18-fashion", out=out, **RUN)
    pd.testing.assert_frame_equal(_counts(df), _counts(cli_rows))
    before = (out / "results.csv").read_bytes()
    again = robustlab.evaluate("zoo:resnet18-fashion", out=out, **RUN)
    assert (out / "results.csv").read_bytes() == before
    assert len(again) == 3
    assert (out / "manifest.json").is_file()
    assert any((out / "outcomes").iterdir())


class Wrong(nn.Module):
    def __init__(self, classes: int = 10, value: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, classes)  # the dataset's 32x32 RGB pixels
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * self.value


@pytest.mark.parametrize("model, message", [
    (Wrong().train(), "Wrong is in training mode; call model.eval()"),
    (Wrong(classes=3).eval(), r"returned \(2, 3\) for 2 images of fashion-mnist; it must return logits of shape "
                              r"\(2, 10\)"),
    (object(), "model must be an nn.Module, a checkpoint path or zoo:NAME, got object"),
    (nn.Linear(5, 10).eval(), r"model Linear failed on 2 images of fashion-mnist \(shape \(2, 3, 32, 32\)\): "
                              r"RuntimeError: mat1 and mat2"),
])
def test_a_model_that_cannot_be_evaluated_is_refused_in_one_line(model, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RobustlabError, match=message) as e:
        robustlab.evaluate(model, **RUN)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_normalization_that_does_not_fit_the_dataset_is_refused():
    with pytest.raises(RobustlabError, match="mean= must give 3 finite numbers"):
        robustlab.evaluate(Wrong().eval(), mean=(0.5,), std=(0.2,), **RUN)
    with pytest.raises(RobustlabError, match="std= must be positive"):
        robustlab.evaluate(Wrong().eval(), mean=(0.5,) * 3, std=(0.0,) * 3, **RUN)
    with pytest.raises(RobustlabError, match="name=, mean= and std= apply to a model built in Python"):
        robustlab.evaluate("zoo:resnet18-fashion", name="x", **RUN)


def test_non_finite_logits_count_as_wrong():
    df = robustlab.evaluate(Wrong(value=float("nan")).eval(), dataset="fashion-mnist", n=16, progress=False)
    assert df["correct"].tolist() == [0]


def test_load_results_and_summarize_give_the_report_s_headline_figures(tmp_path):
    out = tmp_path / "run"
    assert main([*CLI, "--ckpt", "zoo:resnet18-fashion,zoo:sdnet18-fashion", "--out", str(out)]) == 0
    df = robustlab.load_results(out)
    with open(out / "results.csv", newline="") as f:
        assert len(df) == len(list(csv.DictReader(f))) == 6
    summary = robustlab.summarize(df).set_index("variant")
    assert len(summary) == 2
    for variant, rows in df.groupby("variant"):
        clean = rows[(rows["corruption"] == "none") & (rows["attack"] == "none")].iloc[0]
        noise = rows[rows["corruption"] == "gaussian_noise"].iloc[0]
        attacked = rows[rows["attack"] == "pgd-linf"].iloc[0]
        got = summary.loc[variant]
        assert got["clean_accuracy"] == pytest.approx(clean["accuracy"])
        assert got["clean_low"] < got["clean_accuracy"] < got["clean_high"]
        assert got["mean_corruption_accuracy"] == pytest.approx(noise["accuracy"])  # one benchmark cell
        assert got["robust Linf 2/255"] == pytest.approx(attacked["correct"] / attacked["n"])
        assert got["robust Linf 2/255 low"] <= got["robust Linf 2/255"] <= got["robust Linf 2/255 high"]
    with pytest.raises(RobustlabError, match="no 'variant' column"):
        robustlab.summarize(pd.read_csv(out / "results.csv"))


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "TinyNet" in printed
    assert "robust Linf 2/255" in printed
    assert np.isfinite([float(v) for v in re.findall(r"clean_accuracy\s+([0-9.]+)", printed)]).all()
