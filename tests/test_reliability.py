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

from robustlab.errors import RobustlabError
from robustlab.rundir import LOCK, RunLock
from tests.helpers import run_cli

EVAL = ["eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--n", "40", "--quiet"]



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
    assert f"is being written by robustlab pid {first.pid}" in second.stderr
    assert second.stderr.count("\n") == 1
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


def test_a_run_killed_before_its_results_file_resumes(tmp_path, monkeypatch):
    """A kill between the manifest (written first) and results.csv leaves a run that resumes."""
    import robustlab.rundir as rundir
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed right after the manifest was written
    with monkeypatch.context() as m:
        m.setattr(rundir, "ResultStore", killed)
        assert run_cli(*EVAL, "--out", out) != 0
    assert (out / "manifest.json").is_file()
    assert not (out / "results.csv").exists()
    assert run_cli(*EVAL, "--out", out) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_a_run_killed_while_writing_its_first_manifest_resumes(tmp_path, monkeypatch):
    """A kill inside the first manifest's atomic write leaves the lock file, figures/ and the manifest's temporary:
    the directory is still this run's to start."""
    import robustlab.files as files
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"

    def killed(fd, data):
        raise KeyboardInterrupt  # as if killed with the temporary file created, before its rename
    with monkeypatch.context() as m:
        m.setattr(files, "_fill", killed)
        m.setattr(files.os, "unlink", lambda *a, **k: None)  # a kill runs no clean-up
        assert run_cli(*EVAL, "--out", out) != 0
    left = sorted(p.name for p in out.iterdir())
    assert [n for n in left if n.startswith(".manifest.json.")], left
    assert run_cli(*EVAL, "--out", out) == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "the leftover temporary is removed"
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_a_run_caught_between_its_first_files_is_reported_as_being_written(tmp_path, capsys):
    from robustlab.rundir import RESULTS
    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out)  # a writer holds it over a results.csv without a manifest (another tool's, or hand-made)
    try:
        (out / RESULTS).write_text("model\n")
        assert run_cli(*EVAL, "--out", out) == 2
        assert f"is being written by robustlab pid {os.getpid()}" in capsys.readouterr().err
    finally:
        held.release()
    assert run_cli(*EVAL, "--out", out) == 2  # nobody writes it now: what it holds is the problem
    assert "holds results.csv but no readable manifest.json" in capsys.readouterr().err


def test_any_failure_midway_is_recorded(tmp_path, monkeypatch):
    import robustlab.runner as runner

    def broken(*a, **k):
        raise ValueError("labels of shape (N, 1)")

    monkeypatch.setattr(runner, "count_correct", broken)
    with pytest.raises(ValueError):
        run_cli(*EVAL, "--out", tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed: ValueError: labels of shape (N, 1)"
    monkeypatch.undo()
    assert run_cli(*EVAL, "--out", tmp_path / "run") == 0, "the failed run's lock went with it; the command resumes"


def test_nan_logits_are_wrong_under_attack_too():
    from robustlab.attacks import attack_batch, make_spec, run_diagnostics
    from robustlab.attacks.harness import guarded
    from tests.helpers import tiny_model
    model = tiny_model("resnet18")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    x, y = torch.rand(30, 3, 32, 32), torch.zeros(30, dtype=torch.long)  # label 0: the argmax of a NaN row
    out = attack_batch(model, x, y, make_spec("pgd-linf", eps="2/255", steps=2), seed=0)
    assert int(out.clean_correct.sum()) == 0
    assert int(out.robust.sum()) == 0
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
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)
    if words:
        assert words in str(e.value)
    for command in (["metrics", path], ["regress", path, path], ["report", path, "--out", tmp_path / "rep"]):
        assert run_cli(*command) == 2


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
    assert run_cli(*EVAL, "--corruptions", "fog", "--severities", "5", "--out", tmp_path / "a") == 0
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 1, "eval writes the cache"
    assert files[0].with_suffix(".json").is_file(), "eval writes the cache"
    want = pd.read_csv(tmp_path / "a" / "results.csv")["correct"].tolist()
    np.save(files[0], np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))  # planted
    capsys.readouterr()
    assert run_cli(*EVAL, "--corruptions", "fog", "--severities", "5", "--out", tmp_path / "b") == 0
    assert "does not match its checksum" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "b" / "results.csv")["correct"].tolist() == want
    rng = np.random.default_rng(1)
    one, two = (ArrayImageSet(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.zeros(6), name="x",
                              split="test", num_classes=10) for _ in range(2))
    generated = [GeneratedImageSet(d, "fog", 1, parameters="cifar", seed=0, cache_dir=tmp_path) for d in (one, two)]
    paths = {g._cache_path(g._cache_key(6)) for g in generated}
    assert len(paths) == 2, "two image sets of the same length and name get different cache files"


def test_outputs_are_replaced_only_with_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    calib = tmp_path / "calib.json"
    calib.write_text("mine\n")
    args = ["calibrate", "--ckpt", "zoo:sdnet18-digits", "--dataset", "digits", "--n", "16", "--levels", "0.1",
            "--lambdas", "0.1:0.2:2", "--out", calib, "--quiet"]
    assert run_cli(*args) == 2
    assert calib.read_text() == "mine\n"
    assert run_cli(*args, "--overwrite") == 0
    assert calib.read_text() != "mine\n"
    out = tmp_path / "c"
    out.mkdir()
    (out / "results.csv").write_text("precious\n")
    corrupt = ["corrupt", "--dataset", "digits", "--n", "8", "--corruptions", "brightness", "--out", out, "--quiet"]
    assert run_cli(*corrupt) == 2
    assert (out / "results.csv").read_text() == "precious\n"
    fresh = tmp_path / "layout"
    assert run_cli(*corrupt[:-3], "--out", fresh, "--quiet") == 0
    done = (fresh / "brightness.npy").stat().st_mtime_ns
    assert run_cli("corrupt", "--dataset", "digits", "--n", "8", "--corruptions", "brightness,contrast", "--out", fresh,
               "--quiet") == 0
    assert (fresh / "brightness.npy").stat().st_mtime_ns == done, "a resumed layout keeps its finished files"
    assert np.load(fresh / "labels.npy").dtype == np.uint8
    assert run_cli("eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--n", "8", "--c-dir", fresh,
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
    import robustlab.evaluation as evaluate
    calls = []
    real = corrupted.content_digest
    counted = lambda data, n: calls.append(n) or real(data, n)  # noqa: E731
    # the generated cells' cache key and the run's image-set fingerprint share the one digest
    monkeypatch.setattr(corrupted, "content_digest", counted)
    monkeypatch.setattr(evaluate, "content_digest", counted)
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    assert run_cli(*EVAL, "--corruptions", "fog,contrast", "--severities", "1,2", "--out", tmp_path / "run") == 0
    assert calls == [40]


# Issue #27: corruption workers that die with their parent (or alone), a resume that verifies what it keeps and
# removes what a killed run left, a read-only install, an empty ROBUSTLAB_CACHE.

def _process_children(pid: int) -> list[int]:
    """The processes whose parent is PID, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # a process that ended while we looked
            continue
    return children


def _process_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _corrupt_with_two_workers(out: Path, stderr: Path) -> tuple[subprocess.Popen, list[int]]:
    """`robustlab corrupt` with 2 workers in a process of its own, once its workers have returned a first batch;
    and its child processes then (the workers and multiprocessing's resource tracker). Its stderr goes to a file:
    the children hold it too, so a pipe would not end with the parent."""
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "robustlab", "corrupt", "--dataset", "digits", "--corruptions",
                                 "glass_blur", "--batch-size", "8", "--workers", "2", "--out", str(out), "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=err)
    start = time.monotonic()
    while True:
        children = _process_children(proc.pid)
        try:
            written = max((p.stat().st_size for p in out.glob(".glass_blur.npy.*.tmp")), default=0)
        except OSError:
            written = 0
        if len(children) >= 3 and written > 1024:  # the header is 128 bytes, a batch 6 KiB
            return proc, children
        assert proc.poll() is None, stderr.read_text()
        assert time.monotonic() - start < 120, "the workers never returned a batch"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
def test_corruption_workers_and_the_resource_tracker_end_with_a_killed_parent(tmp_path):
    proc, children = _corrupt_with_two_workers(tmp_path / "c", tmp_path / "stderr")
    try:
        proc.kill()  # SIGKILL: no cleanup runs in the parent
        proc.wait()
        start = time.monotonic()
        while any(_process_alive(p) for p in children) and time.monotonic() - start < 10:
            time.sleep(0.1)
        assert not [p for p in children if _process_alive(p)], "children outlived their killed parent by 10 s"
    finally:
        for pid in children:
            if _process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
def test_a_killed_worker_ends_corrupt_with_one_line(tmp_path):
    out = tmp_path / "c"
    proc, children = _corrupt_with_two_workers(out, tmp_path / "stderr")
    try:
        worker = next(p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes())
        os.kill(worker, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
        for pid in children:
            if _process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 2, err
    assert err.startswith("robustlab: error: a corruption worker process died ("), err
    assert err.count("\n") == 1, err
    assert "run the same command again" in err
    assert sorted(p.name for p in out.iterdir()) == ["robustlab-corrupt.json"], "no partial file"


def _kill_this_process(*args, **kwargs) -> None:
    """Stands in for the pool's worker function (pickled by name into the spawned workers)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_ends_eval_with_one_line_and_a_failed_status(tmp_path, monkeypatch, capsys):
    import robustlab.corruptions.pool as pool
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pool, "_run", _kill_this_process)
    assert run_cli(*EVAL, "--corruptions", "fog", "--severities", "1", "--workers", "2", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.startswith("robustlab: error: a corruption worker process died ("), err
    assert err.count("\n") == 1, err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == f"failed: {err.strip().removeprefix('robustlab: error: ')}"
    assert len(pd.read_csv(tmp_path / "run" / "results.csv")) == 1, "the clean row finished before"


def _corrupt_fog(out: Path) -> int:
    return run_cli("corrupt", "--dataset", "digits", "--n", "12", "--corruptions", "fog,contrast", "--workers", "1",
               "--out", out, "--quiet")


@pytest.mark.parametrize("spoil,words", [
    ("truncated", "is truncated"), ("longer", "is longer than its array"), ("dtype", "int16"),
    ("shape", "shape (12, 16, 16, 3), not of uint8"), ("not npy", "is not a .npy array"),
    ("symlink", "is a symbolic link")])
def test_corrupt_resume_generates_again_a_file_it_did_not_write(tmp_path, capsys, spoil, words):
    good, out = tmp_path / "good", tmp_path / "out"
    assert _corrupt_fog(good) == 0
    shutil.copytree(good, out)
    fog, elsewhere = out / "fog.npy", tmp_path / "elsewhere.npy"
    if spoil == "truncated":
        fog.write_bytes(fog.read_bytes()[:-100])
    elif spoil == "longer":
        fog.write_bytes(fog.read_bytes() + bytes(768))
    elif spoil == "shape":
        np.save(fog, np.zeros((12, 16, 16, 3), np.uint8))
    elif spoil == "dtype":
        np.save(fog, np.load(fog).astype(np.int16))
    elif spoil == "not npy":
        fog.write_bytes(b"x" * fog.stat().st_size)
    else:  # a link to a file of the right shape elsewhere
        np.save(elsewhere, np.zeros((60, 16, 16, 3), np.uint8))
        fog.unlink()
        fog.symlink_to(elsewhere)
    before = elsewhere.read_bytes() if spoil == "symlink" else b""
    contrast = (out / "contrast.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert _corrupt_fog(out) == 0
    printed = capsys.readouterr()
    assert "2 of 2 corruptions complete" in printed.out
    lines = [line for line in printed.err.splitlines() if "fog.npy" in line]
    assert len(lines) == 1, printed.err
    assert words in lines[0], printed.err
    assert "generated again" in lines[0], printed.err
    assert not fog.is_symlink()
    assert fog.read_bytes() == (good / "fog.npy").read_bytes()
    assert (out / "contrast.npy").stat().st_mtime_ns == contrast, "a good file is kept"
    if spoil == "symlink":
        assert elsewhere.read_bytes() == before, "the link's target is never written"


@pytest.mark.parametrize("name", ["fog.npy", "labels.npy"])
def test_corrupt_refuses_a_directory_in_place_of_a_file(tmp_path, capsys, name):
    out = tmp_path / "out"
    assert _corrupt_fog(out) == 0
    (out / name).unlink()
    (out / name).mkdir()
    (out / name / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert _corrupt_fog(out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustlab: error: {out / name} is a directory"), err
    assert err.count("\n") == 1, err
    assert "remove it" in err
    assert (out / name / "keep.txt").read_text() == "mine"


def test_corrupt_resume_removes_what_a_killed_run_left(tmp_path, monkeypatch):
    import fcntl

    import robustlab.corruptions.pool as pool
    out = tmp_path / "out"
    assert _corrupt_fog(out) == 0
    (out / "fog.npy").unlink()
    stale = [out / ".fog.npy.k3x_9abc.tmp", out / ".labels.npy.0123abcd.tmp",
             out / ".robustlab-corrupt.json.a1b2c3d4.tmp"]
    for path in stale:
        path.write_bytes(b"\x93NUMPY")
    # while another process writes into --out (a rank beside this one), its temporary files are not stale
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert _corrupt_fog(out) == 0
    finally:
        os.close(fd)
    assert all(p.exists() for p in stale)
    monkeypatch.setattr(pool, "corrupt", lambda *a, **k: pytest.fail("a finished file was corrupted again"))
    assert _corrupt_fog(out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["contrast.npy", "fog.npy", "labels.npy", "robustlab-corrupt.json"]


def test_corrupt_resumes_a_layout_recorded_under_the_old_key_and_takes_the_old_option(tmp_path, monkeypatch, capsys):
    """A layout begun before `table` was renamed `parameters` resumes; `--table` still names the parameter set."""
    import robustlab.corruptions.pool as pool
    out = tmp_path / "out"
    assert _corrupt_fog(out) == 0
    layout = out / "robustlab-corrupt.json"
    recorded = json.loads(layout.read_text())
    recorded["table"] = recorded.pop("parameters")
    layout.write_text(json.dumps(recorded))
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    command = ["corrupt", "--dataset", "digits", "--n", "12", "--corruptions", "fog,contrast", "--workers", "1",
               "--out", out, "--quiet", "--table"]
    capsys.readouterr()
    assert run_cli(*command, "imagenet") == 2, "another parameter set is another layout"
    assert "holds a layout made with other settings" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files, "a refusal changes nothing"
    monkeypatch.setattr(pool, "corrupt", lambda *a, **k: pytest.fail("a finished file was corrupted again"))
    assert run_cli(*command, "cifar") == 0
    assert json.loads(layout.read_text())["parameters"] == "cifar"


def test_corruptions_compile_on_a_read_only_install(tmp_path):
    """A read-only package directory and home: numba finds no place for its cache; the kernels compile without one
    instead of every import failing."""
    import tempfile

    import robustlab
    command = []
    if os.getuid() == 0:  # root writes through any mode bits: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run without root's permission override")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    root = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(Path(robustlab.__file__).parent, root / "robustlab",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (root / "home").mkdir()
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_"))}
        env.update(HOME=str(root / "home"), PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
        code = ("import numpy as np, robustlab.corruptions.uint8_batch as u; "
                f"assert u.__file__.startswith({str(root)!r}), u.__file__; "
                "print(u.glass_blur(np.zeros((2, 8, 8, 3), np.uint8), (0.7, 1, 2), "
                "[np.random.default_rng(i) for i in range(2)]).shape)")
        run = subprocess.run([*command, sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.strip() == "(2, 8, 8, 3)"
        assert not list(root.rglob("*.nbi")), "nothing cached in the read-only tree"
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root)


def test_an_empty_robustlab_cache_means_the_default(tmp_path, monkeypatch):
    from robustlab.evaluation import default_cache_dir
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ROBUSTLAB_CACHE", "")
    assert default_cache_dir() == tmp_path / ".cache" / "robustlab" / "corruptions"
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "corruptions"
