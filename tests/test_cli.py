"""`robustlab eval/train/demo/list` end to end on tiny files in the real formats."""
from __future__ import annotations

import hashlib
import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from robustlab.allocator import allocator_in_use
from robustlab.checkpoints import load_model, save_checkpoint
from robustlab.schema import COLUMNS
from tests.helpers import run_cli, tiny_model, write_cifar, write_imagenet


def direct_accuracy(ckpt, images_nhwc: np.ndarray, labels) -> int:
    model = load_model(ckpt)
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return int((model(x).argmax(1) == torch.as_tensor(labels)).sum())


def test_eval_end_to_end_on_cifar10_pickles(tmp_path, cifar10_dir, sdnet_ckpt, capsys):
    out = tmp_path / "run"
    assert run_cli("eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar10", "--data-dir", cifar10_dir,
                   "--out", out, "--batch-size", 7, "--quiet") == 0
    printed = capsys.readouterr().out
    assert "top-1 %" in printed
    assert "results:" in printed
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == COLUMNS
    assert len(df) == 1
    row = df.iloc[0]
    with open(cifar10_dir / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    images = raw[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert row["n"] == 24
    assert row["correct"] == direct_accuracy(sdnet_ckpt, images, raw[b"labels"])
    assert row["accuracy"] == pytest.approx(row["correct"] / 24)
    assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert row["ci_high"] - row["ci_low"] > 0.1
    assert 0 <= row["top5_accuracy"] <= 1
    assert row["top5_correct"] >= row["correct"]
    assert row["corruption"] == "none"
    assert row["severity"] == 0
    assert row["attack"] == "none"
    assert row["lambda_mode"] == "fixed"
    assert row["lambda"] == pytest.approx(0.1)
    assert row["residual_mean"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    sha = hashlib.sha256(sdnet_ckpt.read_bytes()).hexdigest()
    assert row["checkpoint_sha256"] == sha
    assert manifest["models"]["sdnet"]["sha256"] == sha
    assert manifest["status"] == "finished"
    assert manifest["device"].startswith("cpu")
    assert manifest["arguments"]["dataset"] == "cifar10"
    assert torch.__version__.startswith(manifest["versions"]["torch"])
    assert manifest["malloc"] == allocator_in_use() != "system"  # main() kept freed memory (robustlab/allocator.py)


def test_batch_size_and_n_and_parent_dir(tmp_path, cifar10_dir, sdnet_ckpt):
    results = []
    for i, (bs, n) in enumerate([(5, None), (24, None), (4, 10)]):
        out = tmp_path / f"r{i}"
        args = ["eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar10", "--data-dir", cifar10_dir.parent,
                "--out", out, "--batch-size", bs, "--quiet"]
        assert run_cli(*args, *(["--n", n] if n else [])) == 0
        results.append(pd.read_csv(out / "results.csv").iloc[0])
    assert results[0]["correct"] == results[1]["correct"]
    assert results[0]["residual_mean"] == pytest.approx(results[1]["residual_mean"], rel=1e-5)
    assert results[2]["n"] == 10


def test_cifar100_and_imagenet_layouts(tmp_path):
    c100 = write_cifar(tmp_path / "c100", classes=100, n_test=12)
    ck = tmp_path / "r100.pt"
    save_checkpoint(tiny_model("resnet18", num_classes=100), ck)
    assert run_cli("eval", "--ckpt", ck, "--dataset", "cifar100", "--data-dir", c100, "--out", tmp_path / "a",
                   "--quiet") == 0
    row = pd.read_csv(tmp_path / "a" / "results.csv").iloc[0]
    assert row["n"] == 12
    assert row["lambda_mode"] == "n.a."
    assert np.isnan(row["lambda"])

    inet = write_imagenet(tmp_path / "val")
    ck = tmp_path / "inet.pt"
    save_checkpoint(tiny_model("sdnet18", num_classes=3, size=224), ck)
    assert run_cli("eval", "--ckpt", ck, "--dataset", "imagenet", "--data-dir", inet, "--out", tmp_path / "b",
                   "--batch-size", 4, "--quiet") == 0
    row = pd.read_csv(tmp_path / "b" / "results.csv").iloc[0]
    assert row["n"] == 6
    assert row["split"] == "val"
    assert np.isnan(row["top5_accuracy"])


def test_shipped_digits_models_are_accurate(tmp_path):
    for name in ("sdnet18-digits", "resnet18-digits"):
        assert load_model(f"zoo:{name}").config.dataset == "digits"
        assert run_cli("eval", "--ckpt", f"zoo:{name}", "--dataset", "digits", "--out", tmp_path / name, "--quiet") == 0
        row = pd.read_csv(tmp_path / name / "results.csv").iloc[0]
        assert row["n"] == 450
        assert row["accuracy"] > 0.95


def test_demo_runs_the_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    assert run_cli("demo", "--dataset", "digits", "--n", 24, "--out", tmp_path / "demo", "--quiet") == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(tmp_path / "demo" / "results.csv")
    assert set(df["model"]) == {"sdnet18-digits", "resnet18-digits"}
    # resnet: clean + 75 corruption cells + 2 PGD eps; sdnet: the same at fixed lambda and with Algorithm 1
    assert len(df) == 3 * (1 + 75 + 2)
    assert (df["n"] == 24).all()
    attacked = df[df["attack"] == "pgd-linf"]
    assert sorted(attacked["eps"].unique()) == pytest.approx([1 / 255, 2 / 255])
    assert (attacked[attacked["lambda_mode"] == "adaptive-set"]["flags"].str.contains("bpda_selection")).all()
    assert set(df[df["model"] == "sdnet18-digits"]["lambda_mode"]) == {"fixed", "adaptive-set"}
    assert df[(df["corruption"] == "none") & (df["attack"] == "none")]["accuracy"].min() > 0.9
    assert (tmp_path / "demo" / "calibration.json").is_file()
    assert (tmp_path / "demo" / "figures" / "lambda-residual.png").is_file()
    assert "mean_corruption_accuracy" in printed
    assert "resnet18-digits" in printed


def test_train_is_reproducible_and_its_checkpoint_evaluates(tmp_path):
    data = write_cifar(tmp_path / "data", n_train=8, n_test=8)
    paths = []
    for name in ("a.pt", "b.pt"):
        path = tmp_path / name
        assert run_cli("train", "--arch", "sdnet18", "--dataset", "cifar10", "--data-dir", data, "--width", 0.125,
                       "--epochs", 1, "--batch-size", 16, "--out", path, "--quiet") == 0
        paths.append(path)
    a, b = (torch.load(p, weights_only=True) for p in paths)
    assert a["training"]["epochs"] == 1
    assert a["config"]["arch_kwargs"]["width"] == 0.125
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert run_cli("eval", "--ckpt", paths[0], "--dataset", "cifar10", "--data-dir", data, "--out",
                   tmp_path / "run", "--quiet") == 0


def test_list(capsys):
    assert run_cli("list", "models") == 0
    out = capsys.readouterr().out
    assert "sdnet18-all" in out
    assert "resnet34" in out
    assert run_cli("list", "zoo") == 0
    assert "zoo:sdnet18-digits" in capsys.readouterr().out


# ---- bad input: one line naming the problem, exit code 2, nothing written ----

def _bad_inputs(tmp_path, cifar10_dir, sdnet_ckpt):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a checkpoint")

    class Exploit:
        def __reduce__(self):
            return (print, ("code ran",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    c100 = write_cifar(tmp_path / "c100", classes=100, n_test=4)
    inet = write_imagenet(tmp_path / "inet", classes=10, per_class=1)
    base = ["eval", "--dataset", "cifar10", "--data-dir", cifar10_dir, "--quiet"]
    return {
        "missing file": (["eval", "--ckpt", tmp_path / "nope.pt", *base[1:]], "does not exist"),
        "not a checkpoint": (["eval", "--ckpt", tmp_path / "garbage.pt", *base[1:]], "not a PyTorch checkpoint"),
        "code pickle": (["eval", "--ckpt", tmp_path / "evil.pt", *base[1:]], "refusing to load"),
        "wrong arch": (["eval", "--ckpt", sdnet_ckpt, "--arch", "resnet18", *base[1:]], "--arch sdnet18"),
        "unknown arch": (["eval", "--ckpt", sdnet_ckpt, "--arch", "sdnet81", *base[1:]], "did you mean"),
        "wrong classes": (["eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar100", "--data-dir", c100],
                          "predicts 10 classes but cifar100 has 100"),
        "wrong image size": (["eval", "--ckpt", sdnet_ckpt, "--dataset", "imagenet", "--data-dir", inet],
                             "expects 32x32 images but imagenet has 224x224"),
        "empty data dir": (["eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar10", "--data-dir", tmp_path / "empty"],
                           "no test_batch"),
        "empty imagenet dir": (["eval", "--ckpt", sdnet_ckpt, "--dataset", "imagenet", "--data-dir",
                                tmp_path / "empty"], "no images"),
        "unknown dataset": (["eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar11"], "did you mean cifar10"),
        "no data dir": (["eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar10"], "pass --data-dir"),
        "no cuda": (["eval", "--ckpt", sdnet_ckpt, *base[1:], "--device", "cuda"], "no CUDA device"),
    }


CASES = ["missing file", "not a checkpoint", "code pickle", "wrong arch", "unknown arch", "wrong classes",
         "wrong image size", "empty data dir", "empty imagenet dir", "unknown dataset", "no data dir", "no cuda"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(tmp_path, cifar10_dir, sdnet_ckpt, capsys, case):
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv, expected = _bad_inputs(tmp_path, cifar10_dir, sdnet_ckpt)[case]
    out = tmp_path / "out"
    assert run_cli(*argv, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustlab: error: "), err
    assert "\n" not in err, err
    assert expected in err, err
    assert not out.exists(), "nothing may be written on bad input"
    assert "code ran" not in capsys.readouterr().out


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "robustlab", "eval", "--ckpt", str(tmp_path / "nope.pt"),
                           "--dataset", "digits"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_existing_run_is_never_overwritten(tmp_path, cifar10_dir, sdnet_ckpt, capsys):
    """The same command resumes (here: nothing left to run); another one is refused; the rows stay as they were."""
    out = tmp_path / "run"
    args = ["eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar10", "--data-dir", cifar10_dir, "--out", out, "--quiet"]
    assert run_cli(*args) == 0
    before = (out / "results.csv").read_bytes()
    capsys.readouterr()
    assert run_cli(*args) == 0
    assert "1 cells were already in results.csv, 0 ran now" in capsys.readouterr().out
    assert run_cli(*args, "--n", 3) == 2
    assert "holds a run made with other arguments (n: None -> 3)" in capsys.readouterr().err
    assert (out / "results.csv").read_bytes() == before


def test_labels_out_of_range_are_refused(tmp_path, sdnet_ckpt, capsys):
    folder = write_cifar(tmp_path / "data", n_test=6)
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"][3] = 12
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    assert run_cli("eval", "--ckpt", sdnet_ckpt, "--dataset", "cifar10", "--data-dir", folder, "--out",
                   tmp_path / "run", "--quiet") == 2
    assert "label 12 is outside 0..9" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["list", "models"], ["list", "attacks"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(argv):
    """`robustlab list models | head -1`: the reader closes the pipe; exit 0 and nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "robustlab", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == ""


def test_help_and_choices_name_no_registered_name_literally():
    """The CLI's help texts and choices come from the registries: a registered attack, dataset or architecture
    written into a help string or a choices list would go stale when the registry changes."""
    import ast
    from pathlib import Path

    import robustlab.cli
    from robustlab.attacks import ATTACKS
    from robustlab.data import DATASETS
    from robustlab.demo import DEMOS
    from robustlab.models import ARCHS
    names = {*ATTACKS, *DATASETS, *ARCHS, *DEMOS}
    literal = []
    for path in sorted(Path(robustlab.cli.__file__).parent.glob("*.py")):
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "add_argument":
                for keyword in call.keywords:
                    if keyword.arg in ("help", "choices"):
                        for node in ast.walk(keyword.value):
                            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                                literal += [(path.name, name) for name in names
                                            if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", node.value)]
    assert not literal


def test_eval_help_groups_its_options():
    from robustlab.cli import build_parser
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    groups = {g.title: {a.dest for a in g._group_actions} for g in eval_parser._action_groups}
    assert {"models", "data", "corruptions", "attacks", "lambda (SDNet)", "output", "execution"} <= set(groups)
    assert {"ckpt", "arch"} <= groups["models"]
    assert {"attack", "eps", "cascade"} <= groups["attacks"]
    assert {"lmbda", "adaptive_lambda", "select_n"} <= groups["lambda (SDNet)"]
