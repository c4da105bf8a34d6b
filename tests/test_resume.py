"""Resumable runs (SIGKILL, Ctrl-C, changed arguments) and torchrun-sharded evaluation."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robustlab.checkpoints import save_checkpoint
from robustlab.cli import main
from robustlab.outcomes import read_outcomes
from robustlab.results import ResultStore
from robustlab.schema import COLUMNS, cell_key
from tests.helpers import tiny_model, write_cifar

CORRUPTIONS = "gaussian_noise,shot_noise,impulse_noise,contrast"
CELLS = 1 + 4 * 5  # clean + four corruptions at five severities


def rows(path: Path) -> list[dict[str, str]]:
    with open(path / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def measured(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    """The rows by cell, without the wall-clock seconds."""
    return {cell_key(r): {k: v for k, v in r.items() if k != "seconds"} for r in rows(path)}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    data = write_cifar(tmp_path / "data", n_test=400)
    ckpt = tmp_path / "sdnet.pt"
    save_checkpoint(tiny_model("sdnet18"), ckpt)
    args = ["eval", "--ckpt", str(ckpt), "--dataset", "cifar10", "--data-dir", str(data), "--corruptions",
            CORRUPTIONS, "--severities", "1,2,3,4,5", "--batch-size", "50", "--quiet", "--device", "cpu"]
    env = {**os.environ, "ROBUSTLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return args, env


def test_sigkill_mid_run_then_the_same_command_finishes_it(setup, tmp_path: Path) -> None:
    args, env = setup
    cmd = [sys.executable, "-m", "robustlab", *args, "--out", str(tmp_path / "run")]
    results = tmp_path / "run" / "results.csv"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 3:  # header and two finished cells
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_bytes()
    before = before[:before.rfind(b"\n") + 1]  # a torn last line, if any, is not a finished cell
    finished_before = before.count(b"\n") - 1
    assert 2 <= finished_before < CELLS, "the run must have been killed part-way"
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "running"

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = results.read_bytes()
    assert after.startswith(before), "a finished row was lost or rewritten"
    got = rows(tmp_path / "run")
    assert len(got) == CELLS
    assert len({cell_key(r) for r in got}) == CELLS  # everything, no duplicate
    assert f"resumed: {finished_before} cells were already in results.csv, {CELLS - finished_before} ran now" \
        in again.stdout
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["resumes"][0]["status_before"] == "running"

    fresh = subprocess.run([sys.executable, "-m", "robustlab", *args, "--out", str(tmp_path / "fresh")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert measured(tmp_path / "run") == measured(tmp_path / "fresh")


def test_changed_arguments_are_refused_unless_asked(setup, tmp_path: Path, capsys, monkeypatch) -> None:
    args, env = setup
    monkeypatch.setenv("ROBUSTLAB_CACHE", env["ROBUSTLAB_CACHE"])
    base = [*args[:args.index("--corruptions")], "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]
    assert main([*base, "--n", "8"]) == 0
    before = (tmp_path / "run" / "results.csv").read_bytes()
    capsys.readouterr()
    assert main([*base, "--n", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "other arguments (n: 8 -> 16)" in err[0]
    assert "--allow-config-change" in err[0]
    assert (tmp_path / "run" / "results.csv").read_bytes() == before

    assert main([*base, "--n", "16", "--allow-config-change"]) == 0
    got = rows(tmp_path / "run")
    assert [r["n"] for r in got] == ["8", "16"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumes"][0]["changed"] == ["n: 8 -> 16"]
    assert manifest["arguments"]["n"] == 16

    capsys.readouterr()
    assert main([*base, "--n", "16"]) == 0  # the same command on a finished run: nothing to do
    assert "resumed: 2 cells were already in results.csv, 0 ran now" in capsys.readouterr().out
    assert len(rows(tmp_path / "run")) == 2


def test_ctrl_c_keeps_finished_cells_and_says_how_to_resume(setup, tmp_path: Path, capsys, monkeypatch) -> None:
    args, env = setup
    monkeypatch.setenv("ROBUSTLAB_CACHE", env["ROBUSTLAB_CACHE"])
    import robustlab.runner as runner
    real = runner.count_correct
    calls = []

    def interrupted_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(runner, "count_correct", interrupted_on_third)
    out = ["--out", str(tmp_path / "run"), "--n", "20"]
    assert main([*args, *out]) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err
    assert len(rows(tmp_path / "run")) == 2
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(runner, "count_correct", real)
    assert main([*args, *out]) == 0
    assert len({cell_key(r) for r in rows(tmp_path / "run")}) == len(rows(tmp_path / "run")) == CELLS


def test_reopening_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    store = ResultStore(path, create=True)
    header = path.read_bytes()
    row = dict.fromkeys(COLUMNS, "")
    row.update(model="m", lambda_mode="n.a.", n="5", correct="5", seed="0")
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, COLUMNS).writerow(row)
    complete = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b"m2,abc,digits")  # killed mid-write
    store = ResultStore(path)
    assert path.read_bytes() == complete
    assert complete.startswith(header)
    assert store.done == {cell_key(row)}


def test_torchrun_two_cpu_ranks_equal_one_process(tmp_path: Path) -> None:
    """Sharded evaluation (gloo, 2 ranks, 5 batches: uneven shards) gives the single-process rows exactly,
    attacks with random starts included; only rank 0 writes."""
    data = write_cifar(tmp_path / "data", n_test=40)
    ckpt = tmp_path / "sdnet.pt"
    save_checkpoint(tiny_model("sdnet18"), ckpt)
    args = ["eval", "--ckpt", str(ckpt), "--dataset", "cifar10", "--data-dir", str(data), "--corruptions",
            "gaussian_noise", "--severities", "3", "--attack", "pgd-linf", "--eps", "2/255", "--steps", "2",
            "--batch-size", "8", "--skip-diagnostics", "--quiet", "--device", "cpu"]
    env = {**os.environ, "ROBUSTLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "robustlab", *args, "--out", str(tmp_path / "single")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    # a cache of its own: the ranks generate their own batches of the corruption (and cache nothing)
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "robustlab", *args, "--out", str(tmp_path / "sharded")],
                             env={**env, "ROBUSTLAB_CACHE": str(tmp_path / "cache-sharded")},
                             capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("results: ") == 1  # rank 0 alone reports
    assert len(rows(tmp_path / "sharded")) == 3
    assert measured(tmp_path / "sharded") == measured(tmp_path / "single")
    for row in rows(tmp_path / "single"):  # rank 0 wrote every image's outcome, gathered from both shards
        args = dict(key=cell_key(row), image_set=row["image_set"], n=int(row["n"]), correct=int(row["correct"]))
        one, two = (read_outcomes(tmp_path / d, row["outcomes"], **args) for d in ("single", "sharded"))
        assert np.array_equal(one.index, np.arange(40))
        assert np.array_equal(two.index, one.index)
        assert np.array_equal(two.ok, one.ok)
        assert np.array_equal(two.pred, one.pred)
    assert json.loads((tmp_path / "sharded" / "manifest.json").read_text())["ranks"] == 2
    assert not list((tmp_path / "cache-sharded").glob("**/*.npy"))
