"""Issue #13's classes of failure, each at its root: one writer per run directory (two real processes), a failure
midway recorded, NaN logits under attack, results files validated by every reader, caches that cannot lie, and
outputs replaced only on request."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.rundir import LOCK, RunLock

EVAL = ["eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--n", "40", "--quiet"]


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def _wait_for_lock(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while not (path.is_file() and path.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, "the first process never took the run's lock"
        time.sleep(0.05)


def _wait_until_stopped(proc: subprocess.Popen) -> None:
    """SIGSTOP is delivered asynchronously: wait until the process is stopped (state T) or gone."""
    stat = Path(f"/proc/{proc.pid}/stat")
    while proc.poll() is None and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        time.sleep(0.01)


def _stopped_while_holding_the_lock(cmd: list[str], out: Path) -> subprocess.Popen:
    """Starts CMD and stops it while it holds OUT's lock; a run that ended before the stop is started again (the lock
    file keeps its text after release, so seeing the text does not prove the lock is still held)."""
    for _ in range(5):
        shutil.rmtree(out, ignore_errors=True)
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_lock(out / LOCK, first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        _wait_until_stopped(first)
        if RunLock.held_by(out) is not None:
            return first
        first.send_signal(signal.SIGCONT)
        first.communicate(timeout=300)
    pytest.fail("the first process ended before it could be stopped holding the lock, five times")


def test_a_second_writer_is_refused_and_a_killed_one_never_blocks(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "robustlab", *EVAL, "--corruptions", "fog", "--severities", "1", "--out", str(out)]
    first = _stopped_while_holding_the_lock(cmd, out)
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"is being written by robustlab pid {first.pid}" in second.stderr and second.stderr.count("\n") == 1
    assert first.wait(timeout=300) == 0, first.communicate()
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 2, "no duplicated rows"
    # a process killed while holding the lock leaves no lock behind
    killed_out = tmp_path / "killed"
    killed = subprocess.Popen([*cmd[:-1], str(killed_out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lock(killed_out / LOCK, killed)
    killed.kill()
    killed.wait()
    assert subprocess.run([*cmd[:-1], str(killed_out)], capture_output=True, timeout=300).returncode == 0
    assert json.loads((killed_out / "manifest.json").read_text())["status"] == "finished"


def test_a_run_caught_between_its_first_files_is_reported_as_being_written(tmp_path, capsys):
    from robustlab.rundir import RESULTS
    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out)  # as a first writer holds it, after results.csv and before manifest.json
    try:
        (out / RESULTS).write_text("model\n")
        assert cli(*EVAL, "--out", out) == 2
        assert f"is being written by robustlab pid {os.getpid()}" in capsys.readouterr().err
    finally:
        held.release()
    assert cli(*EVAL, "--out", out) == 2  # nobody writes it now: what it holds is the problem
    assert "holds results.csv but no readable manifest.json" in capsys.readouterr().err


def test_any_failure_midway_is_recorded(tmp_path, monkeypatch):
    import robustlab.runner as runner

    def broken(*a, **k):
        raise ValueError("labels of shape (N, 1)")

    monkeypatch.setattr(runner, "count_correct", broken)
    with pytest.raises(ValueError):
        cli(*EVAL, "--out", tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed: ValueError: labels of shape (N, 1)"
    monkeypatch.undo()
    assert cli(*EVAL, "--out", tmp_path / "run") == 0, "the failed run's lock went with it; the same command resumes"


def test_nan_logits_are_wrong_under_attack_too():
    from robustlab.attacks import attack_batch, make_spec, run_diagnostics
    from robustlab.attacks.harness import guarded
    from tests.conftest import tiny_model
    model = tiny_model("resnet18")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    x, y = torch.rand(30, 3, 32, 32), torch.zeros(30, dtype=torch.long)  # label 0: the argmax of a NaN row
    out = attack_batch(model, x, y, make_spec("pgd-linf", eps="2/255", steps=2), seed=0)
    assert int(out.clean_correct.sum()) == 0 and int(out.robust.sum()) == 0
    flags, _ = run_diagnostics(model, x[:8], y[:8], seed=0, steps=2, queries=10)
    assert not flags["randomized"], "NaN logits that stay NaN are not randomness"
    bn = tiny_model("resnet18")
    bn.net.layer0[1].running_mean.fill_(float("nan"))
    with guarded(bn, "a check"):  # an unchanged NaN statistic is unchanged
        pass


@pytest.mark.parametrize("edit,words", [
    (lambda lines: lines[:1], "header but no result rows"),
    (lambda lines: lines + ["garbage,row"], "line 3 has 2 fields"),
    (lambda lines: [lines[0], lines[1].replace(",200,", ",-1,", 1)], None),
    (lambda lines: lines + [lines[1]], "repeated cells"),
])
def test_every_reader_refuses_a_bad_results_file(tmp_path, edit, words):
    from robustlab.schema import COLUMNS, read_results
    row = {c: "" for c in COLUMNS}
    row.update(model="m", dataset="digits", split="test", corruption="none", severity="0", attack="none",
               norm="none", lambda_mode="n.a.", n="200", correct="150", accuracy="0.75", seed="0")
    lines = [",".join(COLUMNS), ",".join(row[c] for c in COLUMNS)]
    path = tmp_path / "results.csv"
    path.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(RobustlabError) as e:
        read_results(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    if words:
        assert words in str(e.value)
    for command in (["metrics", path], ["regress", path, path], ["report", path, "--out", tmp_path / "rep"]):
        assert cli(*command) == 2


def test_correct_above_n_and_empty_correct_name_the_line(tmp_path):
    from robustlab.schema import COLUMNS, read_results
    base = {c: "" for c in COLUMNS}
    base.update(model="m", dataset="d", split="test", corruption="none", severity="0", attack="none", norm="none",
                lambda_mode="n.a.", n="10", seed="0")
    for correct, words in (("11", "line 2: correct 11 exceeds n 10"), ("", "line 2: correct is empty")):
        (tmp_path / "r.csv").write_text(",".join(COLUMNS) + "\n" + ",".join({**base, "correct": correct}[c]
                                                                             for c in COLUMNS) + "\n")
        with pytest.raises(RobustlabError, match=words):
            read_results(tmp_path / "r.csv")


def test_the_generated_cache_is_written_by_eval_verified_and_keyed_by_content(tmp_path, monkeypatch, capsys):
    from robustlab.data import ArrayImageSet
    from robustlab.data.corrupted import GeneratedImageSet
    cache = tmp_path / "cache" / "corruptions"
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    assert cli(*EVAL, "--corruptions", "fog", "--severities", "5", "--out", tmp_path / "a") == 0
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 1 and files[0].with_suffix(".json").is_file(), "eval writes the cache"
    want = pd.read_csv(tmp_path / "a" / "results.csv")["correct"].tolist()
    np.save(files[0], np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))  # planted
    capsys.readouterr()
    assert cli(*EVAL, "--corruptions", "fog", "--severities", "5", "--out", tmp_path / "b") == 0
    assert "does not match its checksum" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "b" / "results.csv")["correct"].tolist() == want
    rng = np.random.default_rng(1)
    one, two = (ArrayImageSet(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.zeros(6), name="x",
                              split="test", num_classes=10) for _ in range(2))
    paths = {GeneratedImageSet(d, "fog", 1, table="cifar", seed=0, cache_dir=tmp_path)._cache_path(
        GeneratedImageSet(d, "fog", 1, table="cifar", seed=0, cache_dir=tmp_path)._cache_key(6)) for d in (one, two)}
    assert len(paths) == 2, "two image sets of the same length and name get different cache files"


def test_outputs_are_replaced_only_with_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    calib = tmp_path / "calib.json"
    calib.write_text("mine\n")
    args = ["calibrate", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--n", "16", "--levels", "0.1",
            "--lambdas", "0.1:0.2:2", "--out", calib, "--quiet"]
    assert cli(*args) == 2 and calib.read_text() == "mine\n"
    assert cli(*args, "--overwrite") == 0 and calib.read_text() != "mine\n"
    out = tmp_path / "c"
    out.mkdir()
    (out / "results.csv").write_text("precious\n")
    corrupt = ["corrupt", "--dataset", "digits", "--n", "8", "--corruptions", "brightness", "--out", out, "--quiet"]
    assert cli(*corrupt) == 2 and (out / "results.csv").read_text() == "precious\n"
    fresh = tmp_path / "layout"
    assert cli(*corrupt[:-3], "--out", fresh, "--quiet") == 0
    done = (fresh / "brightness.npy").stat().st_mtime_ns
    assert cli("corrupt", "--dataset", "digits", "--n", "8", "--corruptions", "brightness,contrast", "--out", fresh,
               "--quiet") == 0
    assert (fresh / "brightness.npy").stat().st_mtime_ns == done, "a resumed layout keeps its finished files"
    assert np.load(fresh / "labels.npy").dtype == np.uint8
    assert cli("eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--n", "8", "--c-dir", fresh,
               "--corruptions", "contrast", "--severities", "1", "--out", tmp_path / "e", "--quiet") == 0, \
        "corrupt's output reads back with eval --c-dir"


def test_written_files_get_ordinary_permissions(tmp_path):
    from robustlab.files import write_atomic
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "f.json", b"{}")
        assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644, "not mkstemp's owner-only 0600"
    finally:
        os.umask(umask)


def test_the_source_images_are_hashed_once_per_run_not_once_per_cell(tmp_path, monkeypatch):
    import robustlab.data.corrupted as corrupted
    calls = []
    real = corrupted.content_digest
    monkeypatch.setattr(corrupted, "content_digest", lambda data, n: calls.append(n) or real(data, n))
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    assert cli(*EVAL, "--corruptions", "fog,contrast", "--severities", "1,2", "--out", tmp_path / "run") == 0
    assert calls == [40]
