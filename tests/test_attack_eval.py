"""`robustlab eval --attack ...`: attack rows, eps sweeps, transfer, saved adversarial examples, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.helpers import run_cli

BASE = ["eval", "--dataset", "digits", "--n", 32, "--batch-size", 16, "--quiet"]


def test_pgd_sweep_rows_and_saved_examples(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*BASE, "--ckpt", "zoo:resnet18-digits", "--attack", "pgd-linf", "--eps", "2/255,0.1", "--steps", 5,
                   "--save-adv", "--out", out) == 0
    df = pd.read_csv(out / "results.csv")
    clean, attacked = df[df["attack"] == "none"].iloc[0], df[df["attack"] == "pgd-linf"]
    assert list(attacked["eps"]) == pytest.approx([2 / 255, 0.1])
    assert (attacked["norm"] == "Linf").all()
    assert (attacked["steps"] == 5).all()
    assert (attacked["restarts"] == 1).all()
    assert (attacked["correct"] <= clean["correct"]).all()
    assert attacked["accuracy"].iloc[1] < attacked["accuracy"].iloc[0], "eps 0.1 must hurt more than 2/255"
    assert attacked["flags"].isna().all(), "a plain ResNet shows no gradient masking"
    saved = np.load(out / "adversarial" / "resnet18-digits-n.a.-pgd-linf-Linf-eps0.100000.npz")
    from robustlab.data import load_dataset
    clean_x = load_dataset("digits").images[:32].transpose(0, 3, 1, 2) / 255.0
    assert saved["adversarial"].shape == (32, 3, 32, 32)
    assert np.abs(saved["adversarial"] - clean_x).max() <= 0.1 + 1e-6
    assert saved["adversarial"].min() >= 0
    assert saved["adversarial"].max() <= 1
    assert int(saved["robust"].sum()) == attacked["correct"].iloc[1]


def test_same_seed_same_robust_accuracy(tmp_path):
    rows = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        assert run_cli(*BASE, "--ckpt", "zoo:sdnet18-digits", "--attack", "pgd-linf", "--eps", "0.05", "--steps", 3,
                       "--skip-diagnostics", "--out", out) == 0
        rows.append(pd.read_csv(out / "results.csv").iloc[1])
    assert rows[0]["correct"] == rows[1]["correct"]


def test_transfer_rows_name_their_source(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*BASE, "--ckpt", "zoo:resnet18-digits", "--attack", "pgd-linf", "--eps", "0.1", "--steps", 5,
                   "--transfer-from", "zoo:sdnet18-digits", "--skip-diagnostics", "--out", out) == 0
    df = pd.read_csv(out / "results.csv", keep_default_na=False)
    attacked = df[df["attack"] == "pgd-linf"]
    assert sorted(attacked["attack_source"]) == ["", "sdnet18-digits"]  # the target's own white-box row too
    row = attacked[attacked["attack_source"] != ""].iloc[0]
    assert row["attack_source"] == "sdnet18-digits"
    assert row["model"] == "resnet18-digits"
    assert row["correct"] <= df.iloc[0]["correct"]


@pytest.mark.parametrize("args,expected", [
    (["--attack", "pgd-linf", "--eps=-8/255"], "negative"),
    (["--attack", "pgd-linf", "--eps", "nan"], "nan"),
    (["--attack", "pgd-linf", "--eps", "-8/255"], "expected one argument"),
    (["--attack", "pgd-linf", "--eps", "8/255", "--steps", "0"], "at least 1"),
    (["--attack", "pgd", "--eps", "8/255"], "unknown attack 'pgd'"),
    (["--attack", "fgsm", "--eps", "0.5", "--norm", "L2"], "L2"),
    (["--attack", "pgd-linf"], "needs --eps"),
    (["--eps", "8/255"], "need --attack"),
])
def test_bad_attack_input(tmp_path, capsys, args, expected):
    try:
        code = run_cli(*BASE, "--ckpt", "zoo:resnet18-digits", *args, "--out", tmp_path / "run")
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err, err
    assert expected.lower() in err.lower(), err
    assert not (tmp_path / "run").exists()


def test_every_attack_setting_is_in_the_row_and_the_cell(tmp_path, capsys):
    out = tmp_path / "run"
    common = [*BASE, "--ckpt", "zoo:resnet18-digits", "--attack", "pgd-linf", "--eps", "8/255", "--steps", 3,
              "--skip-diagnostics", "--out", out]
    assert run_cli(*common, "--alpha", "1/255") == 0
    assert run_cli(*common, "--alpha", "8/255", "--allow-config-change") == 0
    assert "2 cells were already in results.csv, 1 ran now" in capsys.readouterr().out  # the PGD cell reran
    df = pd.read_csv(out / "results.csv", keep_default_na=False)
    attacked = df[df["attack"] == "pgd-linf"]
    assert sorted(attacked["alpha"].astype(float)) == pytest.approx([1 / 255, 8 / 255])
    assert set(attacked["batch_size"]) == {16}
    assert set(df[df["attack"] == "none"]["batch_size"]) == {0}
    assert set(attacked["queries"]) == {0}
    assert set(attacked["steps"]) == {3}
    assert set(attacked["attack_config"]) == {"torchattacks.PGD;random_start_per_image"}


def test_square_counts_queries_and_autoattack_both(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*BASE, "--n", 8, "--ckpt", "zoo:resnet18-digits", "--attack", "square", "--eps", "8/255",
                   "--queries", 20, "--skip-diagnostics", "--out", out) == 0
    row = pd.read_csv(out / "results.csv").iloc[1]
    assert (row["attack"], row["steps"], row["queries"]) == ("square", 0, 20)
    assert np.isnan(row["alpha"])
    assert "resc_schedule" in row["attack_config"]
    from robustlab.attacks import make_spec
    auto = make_spec("autoattack", eps="8/255")
    assert (auto.steps, auto.queries) == (100, 5000)


def test_transfer_flags_describe_the_source(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*BASE, "--ckpt", "zoo:rdsn-digits", "--attack", "pgd-linf", "--eps", "8/255", "--steps", 3,
                   "--transfer-from", "zoo:resnet18-digits", "--out", out) == 0
    df = pd.read_csv(out / "results.csv", keep_default_na=False)
    white = df[(df["attack"] == "pgd-linf") & (df["attack_source"] == "")].iloc[0]
    transfer = df[df["attack_source"] == "resnet18-digits"].iloc[0]
    assert white["flags_model"] == "rdsn-digits"
    assert "zero_gradients" in white["flags"]
    assert transfer["flags_model"] == "resnet18-digits"
    assert transfer["flags"] == ""
    assert transfer["accuracy"] < white["accuracy"], "the transfer attack works where the white-box one cannot"


def test_two_transfer_sources_of_one_name_are_refused(tmp_path, capsys):
    import shutil

    from robustlab.checkpoints import resolve_path
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(resolve_path("zoo:resnet18-digits"), tmp_path / folder / "m.pt")
    code = run_cli(*BASE, "--ckpt", "zoo:sdnet18-digits", "--attack", "pgd-linf", "--eps", "8/255",
                   "--transfer-from", f"{tmp_path / 'a' / 'm.pt'},{tmp_path / 'b' / 'm.pt'}", "--out", tmp_path / "run")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "two models 'm'" in err
    assert "\n" not in err
    assert not (tmp_path / "run").exists()
