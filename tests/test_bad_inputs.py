"""Issue #8's bad-input catalogue, through the real `robustlab eval` entry point.

Every entry ends the command with exit code 2 and one line on stderr, `robustlab: error: <problem>; <fix>`, and
loses nothing already written: files there before the command are byte-identical after it, and a run that
fails midway keeps the rows it finished and records in its manifest why it stopped. NaN weights are the one
entry that is not an error: a one-line warning, and the run goes on with NaN logits counted as wrong (exit 0).
Labels are checked where a file is read, so a bad label stops a run before it writes anything; the runs that
fail midway below are an undecodable image in ImageNet-C and a full disk.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import robustlab.results
from robustlab.checkpoints import save_checkpoint
from robustlab.cli import main
from robustlab.counting import count_correct
from robustlab.data import ArrayImageSet, to_pixels
from robustlab.data.npy import NpyWriter
from robustlab.errors import RobustlabError
from tests.helpers import assert_error_line, snapshot, tiny_model, write_cifar, write_imagenet

N = 8  # test images



def run_eval(capsys: pytest.CaptureFixture, *argv: Any) -> tuple[int, str]:
    code = main(["eval", *(str(a) for a in argv)])
    return code, capsys.readouterr().err


def write_pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def edit_test_batch(folder: Path, edit: Callable[[dict], None]) -> None:
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f)
    edit(batch)
    write_pickle(folder / "test_batch", batch)


class _Exploit:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def world(tmp_path: Path) -> SimpleNamespace:
    """CIFAR-10 pickles, a tiny ResNet checkpoint, a CIFAR-10-C directory (fog), an earlier run and a note."""
    data = write_cifar(tmp_path / "data", n_test=N)
    ckpt = tmp_path / "r18.pt"
    save_checkpoint(tiny_model("resnet18"), ckpt)
    c_dir = tmp_path / "c"
    c_dir.mkdir()
    rng = np.random.default_rng(0)
    np.save(c_dir / "fog.npy", rng.integers(0, 256, (5 * N, 32, 32, 3), dtype=np.uint8))
    with open(data / "test_batch", "rb") as f:
        labels = np.array(pickle.load(f, encoding="bytes")[b"labels"], dtype=np.int64)
    np.save(c_dir / "labels.npy", np.tile(labels, 5))
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "results.csv").write_text("model,correct\nr18,3\n")
    (earlier / "manifest.json").write_text('{"status": "finished"}\n')
    (tmp_path / "notes.txt").write_text("not a directory\n")
    common = ["--dataset", "cifar10", "--data-dir", data, "--quiet"]
    return SimpleNamespace(root=tmp_path, data=data, ckpt=ckpt, c_dir=c_dir, earlier=earlier,
                           eval=["--ckpt", ckpt, *common], common=common, out=tmp_path / "run")


# ---- entries refused before anything is written: (set up the input) -> (eval arguments, what the line names)

def truncated_checkpoint(w):
    cut = w.root / "cut.pt"
    cut.write_bytes(w.ckpt.read_bytes()[:w.ckpt.stat().st_size // 2])
    return ["--ckpt", cut, *w.common], ["cut.pt", "truncated"]


def code_pickle(w):
    evil = w.root / "evil.pkl"
    write_pickle(evil, {"state_dict": _Exploit(w.root / "pwned")})
    return ["--ckpt", evil, *w.common], ["evil.pkl", "posix.system", "could run code"]


def code_in_torch_zip(w):
    evil = w.root / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(w.root / "pwned")}, evil)
    return ["--ckpt", evil, *w.common], ["evil.pt", "could run code"]


def wrong_arch(w):
    return [*w.eval, "--arch", "sdnet18"], ["does not fit arch sdnet18", "--arch resnet18"]


def empty_dataset(w):
    return ["--ckpt", w.ckpt, "--dataset", "cifar10", "--data-dir", write_cifar(w.root / "none", n_test=0),
            "--quiet"], ["holds no images"]


def empty_corrupted_file(w):
    np.save(w.c_dir / "fog.npy", np.zeros((0, 32, 32, 3), np.uint8))
    return [*w.eval, "--c-dir", w.c_dir, "--corruptions", "fog"], ["fog.npy", "(0, 32, 32, 3)", "N >= 1"]


def label_too_large(w):
    edit_test_batch(w.data, lambda b: b[b"labels"].__setitem__(5, 12))
    return w.eval, ["test_batch", "label 12 is outside 0..9 (image 5)"]


def label_negative(w):
    edit_test_batch(w.data, lambda b: b[b"labels"].__setitem__(0, -1))
    return w.eval, ["label -1 is outside 0..9 (image 0)"]


def label_out_of_range_in_a_later_severity(w):
    labels = np.load(w.c_dir / "labels.npy")
    labels[2 * N + 5] = 10  # severity 3: the clean, severity 1 and 2 cells would run first
    np.save(w.c_dir / "labels.npy", labels)
    return [*w.eval, "--c-dir", w.c_dir, "--corruptions", "fog"], ["labels.npy", "label 10", f"image {2 * N + 5}"]


def float_pixels_in_0_1(w):
    edit_test_batch(w.data, lambda b: b.__setitem__(b"data", b[b"data"].astype(np.float32) / 255))
    return w.eval, ["test_batch", "float32 with values in [0", "multiply by 255"]


def integer_pixels_above_255(w):
    edit_test_batch(w.data, lambda b: b.__setitem__(b"data", b[b"data"].astype(np.int64) + 45))
    return w.eval, ["int64 with values in [45, 300]", "rescale to 0..255"]


def float_pixels_in_corrupted_file(w):
    np.save(w.c_dir / "fog.npy", np.load(w.c_dir / "fog.npy").astype(np.float32))
    return [*w.eval, "--c-dir", w.c_dir, "--corruptions", "fog"], ["fog.npy", "float32", "round and store as uint8"]


def missing_corruption_file(w):
    # fog is there and would run first: the missing frost file must still stop the run before it starts
    return [*w.eval, "--c-dir", w.c_dir, "--corruptions", "fog,frost"], ["frost.npy is missing"]


def missing_labels_file(w):
    (w.c_dir / "labels.npy").unlink()
    return [*w.eval, "--c-dir", w.c_dir, "--corruptions", "fog"], ["labels.npy is missing"]


def missing_imagenet_c_severity(w):
    val = write_imagenet(w.root / "val", classes=3, per_class=1)
    write_imagenet(w.root / "inet-c" / "fog" / "1", classes=3, per_class=1, seed=1)
    ckpt = w.root / "inet.pt"
    save_checkpoint(tiny_model("resnet18", num_classes=3, size=224), ckpt)
    return ["--ckpt", ckpt, "--dataset", "imagenet", "--data-dir", val, "--c-dir", w.root / "inet-c",
            "--corruptions", "fog", "--severities", "1,2", "--quiet"], [str(Path("fog") / "2"), "is missing"]


def out_under_a_file(w):  # fails as root too (ENOTDIR), unlike a read-only directory
    return [*w.eval, "--out", w.root / "notes.txt" / "run"], ["notes.txt", "Not a directory", "writable --out"]


def out_is_a_file(w):
    return [*w.eval, "--out", w.root / "notes.txt"], ["notes.txt (Not a directory)", "writable --out"]


def out_holds_an_earlier_run(w):
    return [*w.eval, "--out", w.earlier], ["holds a run made with other arguments", "another --out"]


def suite_with_invalid_toml(w):
    (w.root / "bad.toml").write_text('corruptions = ["fog"\n')
    return [*w.eval, "--corruptions", w.root / "bad.toml"], ["bad.toml", "invalid TOML"]


def suite_with_unknown_corruption(w):
    (w.root / "bad.toml").write_text('description = "x"\ncorruptions = ["gaussian_nois"]\n')
    return [*w.eval, "--corruptions", w.root / "bad.toml"], ["bad.toml line 2", "gaussian_nois"]


def attack_suite_without_eps(w):
    (w.root / "bad.toml").write_text('[[attack]]\nname = "fgsm"\n')
    return [*w.eval, "--attacks", w.root / "bad.toml"], ["bad.toml line 1", "missing key 'eps'"]


def out_holds_another_tools_files(w):
    other = w.root / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "another tool"}\n')
    (other / "data.bin").write_bytes(b"\x00\x01")
    return [*w.eval, "--out", other], ["other", "not a robustlab manifest", "another --out"]


def out_holds_a_planted_link(w):
    fresh = w.root / "fresh"
    fresh.mkdir()
    (fresh / "manifest.json.tmp").symlink_to(w.root / "notes.txt")
    return [*w.eval, "--out", fresh], ["fresh", "not a robustlab run", "another --out"]


def out_is_empty_text(w):
    return [*w.eval, "--out", ""], ["--out is empty", "pass the directory"]


def resume_with_results_linked_outside(w):
    run = w.root / "linked"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "finished", "arguments": {}}) + "\n")
    (w.root / "outside.csv").write_text("model,correct\nr18,3\nr18,4")  # no final newline: a 'torn' line
    (run / "results.csv").symlink_to(w.root / "outside.csv")
    return [*w.eval, "--out", run, "--allow-config-change"], ["results.csv", "not a regular file", "another --out"]


def resume_of_another_schema(w):
    run = w.root / "older"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "finished", "arguments": {}}) + "\n")
    (run / "results.csv").write_text("model,arch,correct\nr18,resnet18,3\nr18,resnet18,4")
    return [*w.eval, "--out", run, "--allow-config-change"], ["older", "another column layout", "pass a new --out"]


def seed_beyond_32_bits(w):
    return [*w.eval, "--seed", str(2 ** 32)], ["--seed 4294967296", "pick a seed"]


def negative_lambda(w):
    return [*w.eval, "--lambda", "-0.1"], ["--lambda -0.1", "finite number >= 0"]


def out_inside_the_data_directory(w):
    return [*w.eval, "--out", w.data / "run"], ["lies inside --data-dir", "pass another --out"]


def float_labels_in_c_dir(w):
    np.save(w.c_dir / "labels.npy", np.load(w.c_dir / "labels.npy").astype(np.float32))
    return [*w.eval, "--c-dir", w.c_dir, "--corruptions", "fog", "--severities", "1"], \
        ["labels.npy", "float32", "store them as integers"]


REFUSED_UP_FRONT = [out_inside_the_data_directory, float_labels_in_c_dir, out_holds_another_tools_files,
                    out_holds_a_planted_link, out_is_empty_text,
                    resume_with_results_linked_outside, resume_of_another_schema, seed_beyond_32_bits, negative_lambda,
                    truncated_checkpoint, code_pickle, code_in_torch_zip, wrong_arch, empty_dataset,
                    empty_corrupted_file, label_too_large, label_negative, label_out_of_range_in_a_later_severity,
                    float_pixels_in_0_1, integer_pixels_above_255, float_pixels_in_corrupted_file,
                    missing_corruption_file, missing_labels_file, missing_imagenet_c_severity, out_under_a_file,
                    out_is_a_file, out_holds_an_earlier_run, suite_with_invalid_toml, suite_with_unknown_corruption,
                    attack_suite_without_eps]


@pytest.mark.parametrize("entry", REFUSED_UP_FRONT, ids=lambda f: f.__name__)
def test_refused_before_anything_is_written(world, capsys, entry):
    argv, names = entry(world)
    if "--out" not in argv:
        argv = [*argv, "--out", world.out]
    before = snapshot(world.root)
    code, err = run_eval(capsys, *argv)
    assert code == 2
    assert_error_line(err, *names)
    assert snapshot(world.root) == before, "a refused command must not write, move or delete anything"
    assert "pwned" not in before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories (see out_under_a_file)")
def test_read_only_output_directory(world, capsys):
    locked = world.root / "locked"
    locked.mkdir(mode=0o555)
    before = snapshot(world.root)
    code, err = run_eval(capsys, *world.eval, "--out", locked / "run")
    assert code == 2
    assert_error_line(err, "Permission denied", "writable --out")
    assert snapshot(world.root) == before


def test_bad_input_in_a_real_process(world):
    float_pixels_in_0_1(world)
    proc = subprocess.run([sys.executable, "-m", "robustlab", "eval", *map(str, world.eval), "--out",
                           str(world.out)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert_error_line(proc.stderr, "float32", "multiply by 255")
    assert not world.out.exists()


# ---- NaN weights: a warning, not an error

def test_nan_weights_warn_and_their_nan_logits_count_as_wrong(world, capsys):
    model = tiny_model("resnet18")
    with torch.no_grad():
        model.net.linear.weight[3, 0] = float("nan")  # every logit of class 3 is NaN, so every image's are
    save_checkpoint(model, world.root / "nan.pt")
    code, err = run_eval(capsys, "--ckpt", world.root / "nan.pt", *world.common, "--out", world.out)
    assert code == 0, "NaN weights are a warning: the run goes on"
    assert err.startswith("robustlab: warning: nan: 1 tensor holds NaN or inf (net.linear.weight)")
    assert err.count("\n") == 1
    assert "count as wrong" in err
    row = pd.read_csv(world.out / "results.csv").iloc[0]
    assert row["n"] == N
    assert row["correct"] == 0
    assert row["accuracy"] == 0
    manifest = json.loads((world.out / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["warnings"] == [err.strip().removeprefix("robustlab: ")]


def test_nan_weights_warn_before_a_calibration(world, capsys):
    model = tiny_model("sdnet18")
    with torch.no_grad():
        model.net.linear.weight[3, 0] = float("nan")
    save_checkpoint(model, world.root / "nan.pt")
    code = main(["calibrate", "--ckpt", str(world.root / "nan.pt"), "--dataset", "cifar10", "--data-dir",
                 str(world.data), "--split", "test", "--n", "8", "--levels", "0.1", "--lambdas", "0.1:0.2:2",
                 "--out", str(world.root / "calib.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.startswith("robustlab: warning: nan: 1 tensor holds NaN or inf (net.linear.weight)")
    assert err.count("\n") == 1
    assert "mean nothing" in err
    assert "retrain" in err


class _NanOnOddImages(nn.Module):
    """Logits that put each image's label first, NaN for the images at odd positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0, 0, 0].mul(255).round().long()
        logits = nn.functional.one_hot(labels, 10).float()
        logits[1::2, 4] = float("nan")  # one NaN entry is enough: argmax may still pick the label
        return logits


def test_non_finite_logits_count_as_wrong():
    labels = torch.arange(10)
    images = labels.view(10, 1, 1, 1).expand(10, 3, 2, 2).to(torch.uint8).contiguous()
    counts = count_correct(_NanOnOddImages(), [(0, (images, labels))], torch.device("cpu"), top5=True)
    assert (counts.n, counts.correct, counts.top5_correct) == (10, 5, 5)


# ---- pixels handed to the Python API

@pytest.mark.parametrize("images,names", [
    (np.full((2, 4, 4, 3), 0.5, np.float32), ["float32 with values in [0.5, 0.5]", "multiply by 255"]),
    (np.full((2, 4, 4, 3), 200.0), ["float64", "round and store as uint8"]),
    (np.full((2, 4, 4, 3), -3, np.int16), ["int16 with values in [-3, -3]", "rescale to 0..255"]),
])
def test_python_api_refuses_pixels_that_are_not_uint8(images, names):
    with pytest.raises(RobustlabError) as err:
        ArrayImageSet(images, np.zeros(2), name="mine", split="test", num_classes=10)
    assert_error_line(f"robustlab: error: {err.value}\n", "mine", *names)
    with pytest.raises(RobustlabError) as err:
        to_pixels(torch.from_numpy(images).permute(0, 3, 1, 2), torch.device("cpu"))
    assert_error_line(f"robustlab: error: {err.value}\n", "image batch", *names)


# ---- runs that fail midway keep their rows and say why they stopped

def test_full_disk_keeps_the_finished_rows(world, capsys, monkeypatch):
    argv = [*world.eval, "--c-dir", world.c_dir, "--corruptions", "fog", "--severities", "1,2"]
    assert run_eval(capsys, *argv, "--out", world.root / "complete")[0] == 0
    complete = pd.read_csv(world.root / "complete" / "results.csv")
    appends = []
    real_write = robustlab.results.append_synced

    def disk_fills_after_two_rows(path, data, *, new):
        if not new:
            appends.append(path)
            if len(appends) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data, new=new)

    monkeypatch.setattr(robustlab.results, "append_synced", disk_fills_after_two_rows)
    before = snapshot(world.root)
    code, err = run_eval(capsys, *argv, "--out", world.out)
    assert code == 2
    assert_error_line(err, str(world.out / "results.csv"), "No space left on device", "free space",
                      "pick another --out")
    rows = pd.read_csv(world.out / "results.csv")
    assert len(rows) == 2
    assert list(rows["corruption"]) == ["none", "fog"]
    same = [c for c in rows.columns if c != "seconds"]
    pd.testing.assert_frame_equal(rows[same], complete[same].iloc[:2])
    manifest = json.loads((world.out / "manifest.json").read_text())
    assert manifest["status"] == f"failed: {err.strip().removeprefix('robustlab: error: ')}"
    assert "ended" in manifest
    after = snapshot(world.root)
    assert {k: v for k, v in after.items() if not k.startswith("run/")} == before


def test_full_disk_while_writing_corruptions_keeps_the_finished_files(world, capsys, monkeypatch):
    out = world.root / "c-written"
    real_append, appended = NpyWriter.append, []

    def disk_fills_in_the_second_file(self, rows):
        appended.append(self.path.name)
        if self.path.name == "contrast.npy":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.tmp))
        real_append(self, rows)

    monkeypatch.setattr(NpyWriter, "append", disk_fills_in_the_second_file)
    code = main(["corrupt", "--dataset", "cifar10", "--data-dir", str(world.data), "--out", str(out),
                 "--corruptions", "brightness,contrast", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert_error_line(err, "contrast.npy", "No space left on device", "free space")
    from robustlab.corrupt import LAYOUT_FILE  # what robustlab records of the layout, for a resume
    assert sorted(p.name for p in out.iterdir() if p.name != LAYOUT_FILE) == ["brightness.npy"], \
        "the finished file stays, no partial one"
    assert np.load(out / "brightness.npy").shape == (5 * N, 32, 32, 3)


def test_undecodable_image_midway_keeps_the_finished_rows(tmp_path):
    """A real process: ImageNet images are decoded in DataLoader workers, whose errors come wrapped in a
    traceback unless the reader brings them back as data."""
    val = write_imagenet(tmp_path / "val", classes=3, per_class=1)
    c_dir = tmp_path / "inet-c"
    for severity in (1, 2):
        write_imagenet(c_dir / "fog" / str(severity), classes=3, per_class=1, seed=severity)
    broken = sorted((c_dir / "fog" / "2").rglob("*.JPEG"))[1]
    broken.write_bytes(b"not a JPEG")
    ckpt = tmp_path / "inet.pt"
    save_checkpoint(tiny_model("resnet18", num_classes=3, size=224), ckpt)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "robustlab", "eval", "--ckpt", str(ckpt), "--dataset", "imagenet",
                           "--data-dir", str(val), "--c-dir", str(c_dir), "--corruptions", "fog", "--severities",
                           "1,2", "--batch-size", "2", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert_error_line(proc.stderr, f"cannot decode {broken}", "remove or replace the file")
    rows = pd.read_csv(out / "results.csv")
    assert list(rows["corruption"]) == ["none", "fog"]
    assert list(rows["severity"]) == [0, 1]
    assert (rows["n"] == 3).all()
    status = json.loads((out / "manifest.json").read_text())["status"]
    assert status.startswith("failed: cannot decode")
    assert str(broken) in status


# ---- issue #27: inputs that crashed, hung or took gigabytes

def _finished_run(w: SimpleNamespace, capsys: pytest.CaptureFixture) -> list:
    argv = [*w.eval, "--out", w.out]
    assert run_eval(capsys, *argv)[0] == 0
    return argv


@pytest.mark.parametrize("edit,names", [
    (lambda row: ["garbage"], ["line 2 has 1 fields", "remove or repair"]),
    (lambda row: list(row.values())[:5], ["line 2 has 5 fields"]),
    (lambda row: [*row.values(), "1"], ["line 2 has"]),
    (lambda row: list({**row, "n": "many"}.values()), ["line 2: n is 'many', not a number"]),
    (lambda row: list({**row, "correct": "-1"}.values()), ["line 2: correct is -1"]),
    (lambda row: list(row.values()), ["repeated cells (lines 2, 3"]),
], ids=["garbage", "short", "long", "n not a number", "negative count", "repeated cell"])
def test_resume_refuses_a_damaged_results_line(world, capsys, edit, names):
    """Not the torn last line a killed run leaves (resume drops that one): a whole line that every reader of the
    file would refuse after the resume."""
    import csv
    import io
    argv = _finished_run(world, capsys)
    results = world.out / "results.csv"
    header, line = results.read_bytes().splitlines(keepends=True)
    row = next(csv.DictReader(io.StringIO((header + line).decode())))
    damaged = io.StringIO()
    csv.writer(damaged).writerow(edit(row))
    results.write_bytes(header + damaged.getvalue().encode() + line)
    before = snapshot(world.root)
    code, err = run_eval(capsys, *argv)
    assert code == 2
    assert_error_line(err, str(results), *names)
    assert snapshot(world.root) == before


DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("edit,names", [
    (lambda m: json.dumps({**m, "arguments": "--seed 1"}), ["manifest.json", "arguments", "'--seed 1'"]),
    (lambda m: json.dumps(m)[:-1] + f', "deep": {DEEP_JSON}}}', ["manifest.json", "nested too deeply"]),
], ids=["arguments a string", "nested 100,000 deep"])
def test_resume_refuses_a_broken_manifest(world, capsys, edit, names):
    argv = _finished_run(world, capsys)
    manifest = world.out / "manifest.json"
    manifest.write_text(edit(json.loads(manifest.read_text())))
    before = snapshot(world.root)
    code, err = run_eval(capsys, *argv)
    assert code == 2
    assert_error_line(err, *names, "another --out")
    assert snapshot(world.root) == before


def _calibration_without_residual_mean() -> str:
    from robustlab.adaptive import Calibration, Fit
    calib = Calibration(checkpoint_sha256="ab" * 32, arch="sdnet18", layer=0, noise="gaussian", grid=[0.1, 0.2],
                        levels=[0.1], sweep=[{"level": 0.1, "lambda": 0.1, "accuracy": 0.5, "residual_mean": 2.0},
                                             {"level": 0.1, "lambda": 0.2, "accuracy": 0.4}],
                        points=[{"level": 0.1, "lambda": 0.1, "residual": 2.0, "accuracy": 0.5}],
                        fit=Fit(0.0, 0.1, float("nan")), calibration_split="digits/train", n=8, seed=0)
    return json.dumps(calib.to_json())


@pytest.mark.parametrize("name,text,names", [
    ("manifest.json", f'{{"status": "finished", "deep": {DEEP_JSON}}}', ["manifest.json", "nested too deeply"]),
    ("calibration.json", DEEP_JSON, ["calibration.json", "nested too deeply"]),
    ("calibration.json", _calibration_without_residual_mean(), ["calibration.json", "sweep row 2",
                                                               "lacks residual_mean"]),
], ids=["manifest nested 100,000 deep", "calibration nested 100,000 deep", "sweep without residual_mean"])
def test_report_skips_a_broken_manifest_or_calibration_with_a_warning(world, capsys, name, text, names):
    """report warns of a run's unreadable manifest or calibration and leaves its details out, as it does for
    invalid JSON."""
    _finished_run(world, capsys)
    (world.out / name).write_text(text)
    before = snapshot(world.out)
    code = main(["report", str(world.out), "--out", str(world.root / "report")])
    err = capsys.readouterr().err
    assert code == 0
    assert err.startswith("robustlab: warning: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err, err
    for part in names:
        assert part in err, (part, err)
    assert snapshot(world.out) == before


def _images_header(*shape: int) -> bytes:
    return (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)


def test_idx_gz_bomb_is_read_no_further_than_its_header_announces(tmp_path):
    import gzip
    import tracemalloc

    from robustlab.data.idx import IMAGES_MAGIC, read_idx
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    zeros = gzip.compress(bytes(1 << 20))  # gzip members decompress as one stream: 1 MiB of zeros each
    path.write_bytes(gzip.compress(_images_header(2, 28, 28) + bytes(2 * 28 * 28)) + zeros * 256)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(RobustlabError) as err:
            read_idx(path, IMAGES_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_error_line(f"robustlab: error: {err.value}\n", str(path), "2x28x28", "more than", "copy the file")
    assert peak < 8 << 20, f"{peak / 2 ** 20:.0f} MiB to read a file announcing 1.5 KiB"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape,names", [
    ((1 << 22, 1 << 21, 1 << 21), ["4194304x2097152x2097152", "more than"]),  # 2^64 bytes: 0 in int64
    ((100_000_000, 28, 28), ["100000000x28x28", "more than"]),
    ((3, 28, 28), ["3x28x28", "holds only 1568"]),
])
def test_idx_header_announcing_an_impossible_size_is_refused(world, capsys, gz, shape, names):
    import gzip

    from tests.helpers import write_idx
    root = write_idx(world.root / "mnist", n=3, gz=gz)
    images = root / f"t10k-images-idx3-ubyte{'.gz' if gz else ''}"
    data = _images_header(*shape) + bytes(2 * 28 * 28)
    images.write_bytes(gzip.compress(data) if gz else data)
    before = snapshot(world.root)
    code, err = run_eval(capsys, "--ckpt", world.ckpt, "--dataset", "mnist", "--data-dir", root, "--quiet",
                         "--out", world.out)
    assert code == 2
    assert_error_line(err, str(images), *names)
    assert snapshot(world.root) == before


LAUGHS = ('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
          + "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcde", "bcdef"))
          + "MODEL:\n  NAME: *f\n")  # 9^6 strings by reference, 4 MB as text


@pytest.mark.parametrize("text,names", [
    (LAUGHS, ["uses YAML aliases", "*a"]),
    ("MODEL:\n  NAME: " + "x" * 100_000 + "\n", ["MODEL.NAME is 'xxx", "...", "one of sdnet18"]),
    ("MODEL:\n  NAME: " + "[" * 100_000 + "]" * 100_000 + "\n", ["is not a YAML file", "recursion"]),
    ("#" * ((1 << 20) + 1), ["is over 1 MiB"]),
], ids=["billion laughs", "a long value", "nested 100,000 deep", "over 1 MiB"])
def test_official_config_error_stays_short(world, capsys, text, names):
    config = world.root / "exp.yaml"
    config.write_text(text)
    before = snapshot(world.root)
    code, err = run_eval(capsys, *world.eval, "--official-config", config, "--out", world.out)
    assert code == 2
    assert_error_line(err, str(config), *names)
    assert len(err) < 500, f"a {len(err)}-character error line"
    assert snapshot(world.root) == before


@pytest.mark.parametrize("key,value,names", [
    ("NUM_LAYERS", 10 ** 30, ["MODEL.NUM_LAYERS is 1000000000000000000000000000000", "an integer in 1..100"]),
    ("NUM_LAYERS", 101, ["an integer in 1..100"]),
    ("NUM_CLASSES", 10 ** 9, ["MODEL.NUM_CLASSES is 1000000000", "an integer in 1..100000"]),
    ("EXPANSION_FACTOR", 2 ** 63, ["MODEL.EXPANSION_FACTOR", "an integer in 1..64"]),
    ("LAMBDA", 10 ** 400, ["MODEL.LAMBDA is 1000", "...", "a finite number >= 0"]),
    ("MU", [10 ** 400], ["MODEL.MU is [1000", "a finite number >= 0"]),
], ids=["NUM_LAYERS 10**30", "NUM_LAYERS 101", "NUM_CLASSES 10**9", "EXPANSION_FACTOR 2**63", "LAMBDA 10**400",
        "MU [10**400]"])
def test_official_config_integers_are_bounded(tmp_path, key, value, names):
    from robustlab.official_config import read_official_config
    config = tmp_path / "exp.yaml"
    config.write_text(f"MODEL:\n  NAME: sdnet18\n  {key}: {value}\n")
    with pytest.raises(RobustlabError) as err:
        read_official_config(config)
    line = f"robustlab: error: {err.value}\n"
    assert_error_line(line, str(config), *names)
    assert len(line) < 500


def test_imagenet_image_of_absurd_aspect_ratio_is_refused_before_resizing(tmp_path):
    """A 6000 x 1 PNG (a few KB) would be resized to 1,536,000 x 256 (1.2 GB) for a 224 x 224 crop."""
    from PIL import Image
    val = write_imagenet(tmp_path / "val", classes=3, per_class=1)
    thin = val / "n00000001" / "thin.png"
    Image.new("RGB", (6000, 1), (200, 10, 10)).save(thin)
    ckpt = tmp_path / "inet.pt"
    save_checkpoint(tiny_model("resnet18", num_classes=3, size=224), ckpt)
    proc = subprocess.run([sys.executable, "-m", "robustlab", "eval", "--ckpt", str(ckpt), "--dataset", "imagenet",
                           "--data-dir", str(val), "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert_error_line(proc.stderr, str(thin), "6000x1", "remove or replace the file")
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"].startswith("failed: ")


def test_a_fifo_as_the_run_lock_neither_hangs_nor_crashes(world, capsys):
    argv = [str(a) for a in _finished_run(world, capsys)]
    lock = world.out / ".robustlab.lock"
    lock.unlink()
    os.mkfifo(lock)
    before = snapshot(world.root)  # a FIFO is not a file: snapshot never opens it
    for extra, names in ((["--seed", "1"], ["holds a run made with other arguments"]),
                         ([], [str(lock), "not a regular file", "remove it"])):
        proc = subprocess.run([sys.executable, "-m", "robustlab", "eval", *argv, *extra], capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 2, proc.stderr
        assert_error_line(proc.stderr, *names)
        assert snapshot(world.root) == before
        assert lock.is_fifo()


# ---- issue #27: every output checked before any work, no write through a link, numbers bounded

def run_cli_capturing(capsys: pytest.CaptureFixture, *argv: Any) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def sdnet_checkpoint(w: SimpleNamespace) -> Path:
    path = w.root / "sd.pt"
    if not path.exists():
        save_checkpoint(tiny_model("sdnet18"), path)
    return path


def calibrate_args(w: SimpleNamespace, *more: Any) -> list[Any]:
    return ["calibrate", "--ckpt", sdnet_checkpoint(w), "--dataset", "cifar10", "--data-dir", w.data, "--split",
            "test", "--n", "8", "--lambdas", "0.1:0.2:2", "--quiet", *more]


def resumable_save_adv_run(w: SimpleNamespace, capsys: pytest.CaptureFixture) -> tuple[list[Any], Path]:
    """The arguments of a --save-adv run whose attack cell is unfinished (its row dropped), and its npz file."""
    argv = ["eval", *w.eval, "--attack", "fgsm", "--eps", "1/255", "--save-adv", "--skip-diagnostics", "--out", w.out]
    assert run_cli_capturing(capsys, *argv)[0] == 0
    results = w.out / "results.csv"
    results.write_text("".join(results.read_text().splitlines(keepends=True)[:-1]))
    return argv, next((w.out / "adversarial").iterdir())


@pytest.mark.parametrize("linked", ["adversarial-folder", "npz-file"])
def test_resume_with_save_adv_refuses_links(world, capsys, linked):
    argv, npz = resumable_save_adv_run(world, capsys)
    outside = world.root / "outside"
    outside.mkdir()
    if linked == "adversarial-folder":
        (world.out / "adversarial").rename(outside / "adversarial")
        (outside / "adversarial" / npz.name).write_bytes(b"not robustlab's")
        (world.out / "adversarial").symlink_to(outside / "adversarial")
    else:
        (outside / "target.bin").write_bytes(b"not robustlab's")
        npz.unlink()
        npz.symlink_to(outside / "target.bin")
    before = snapshot(world.root)
    code, err = run_cli_capturing(capsys, *argv)
    assert code == 2
    assert_error_line(err, "adversarial", "is a symbolic link", "remove it or pass another --out")
    assert snapshot(world.root) == before


def test_adversarial_examples_are_never_written_through_a_link(tmp_path):
    """A link planted after the up-front checks: the write itself refuses it."""
    from robustlab.files import write_below
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "adversarial").symlink_to(outside)
    with pytest.raises(RobustlabError) as err:
        write_below(run, run / "adversarial" / "x.npz", b"adversarial examples")
    assert_error_line(f"robustlab: error: {err.value}\n", str(run / "adversarial"), "symbolic link", "remove it")
    assert list(outside.iterdir()) == []
    write_below(run, run / "new" / "x.npz", b"adversarial examples")  # a missing folder is made, inside the run
    assert (run / "new" / "x.npz").read_bytes() == b"adversarial examples"


@pytest.mark.parametrize("planted", ["figures-link", "report-html-folder"])
def test_report_checks_every_output_before_writing(world, capsys, monkeypatch, tmp_path_factory, planted):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    argv = ["eval", *world.eval, "--corruptions", "brightness", "--severities", "1", "--out", world.out]
    assert run_cli_capturing(capsys, *argv)[0] == 0  # corruption rows: the report draws figures
    out = world.root / "report"
    out.mkdir()
    if planted == "figures-link":
        (world.root / "elsewhere").mkdir()
        (out / "figures").symlink_to(world.root / "elsewhere")
        names = [str(out / "figures"), "is a symbolic link"]
    else:
        (out / "report.html").mkdir()
        names = [str(out / "report.html"), "is a directory"]
    before = snapshot(world.root)
    code, err = run_cli_capturing(capsys, "report", world.out, "--out", out)
    assert code == 2
    assert_error_line(err, *names)
    assert snapshot(world.root) == before


@pytest.mark.parametrize("planted", ["png-folder", "parent-is-a-file"])
def test_calibrate_checks_its_outputs_before_the_sweep(world, capsys, monkeypatch, planted):
    import robustlab.adaptive.noise_sweep as noise_sweep

    def no_sweep(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the sweep ran before the outputs were checked")

    monkeypatch.setattr(noise_sweep, "sweep", no_sweep)
    argv = calibrate_args(world, "--levels", "0.1")
    if planted == "png-folder":
        folder = world.root / "calib"
        folder.mkdir()
        (folder / "c.json").write_text("{}\n")
        (folder / "c.png").mkdir()
        argv += ["--overwrite", "--out", folder / "c.json"]
        names = [str(folder / "c.png"), "is a directory"]
    else:
        argv += ["--out", world.root / "notes.txt" / "c.json"]
        names = [str(world.root / "notes.txt"), "not a directory"]
    before = snapshot(world.root)
    code, err = run_cli_capturing(capsys, *argv)
    assert code == 2
    assert_error_line(err, *names)
    assert snapshot(world.root) == before


def results_with(src: Path, dst: Path, **values: str) -> Path:
    """A copy of results file src with these columns set in every row."""
    rows = pd.read_csv(src, dtype=str, keep_default_na=False)
    for column, value in values.items():
        rows[column] = value
    rows.to_csv(dst, index=False)
    return dst


def test_regress_fails_a_run_that_evaluated_nothing(world, capsys):
    assert run_cli_capturing(capsys, "eval", *world.eval, "--out", world.out)[0] == 0
    empty = results_with(world.out / "results.csv", world.root / "empty.csv", n="0", correct="0")
    code, err = run_cli_capturing(capsys, "regress", world.out / "results.csv", empty)
    assert code == 2
    assert_error_line(err, "current results evaluated no images (n = 0) in 1 of the 1 baseline cells", "fix")


@pytest.mark.parametrize("n", ["inf", "1e400"])
@pytest.mark.parametrize("side", ["baseline", "current"])
def test_regress_refuses_an_infinite_count(world, capsys, n, side):
    assert run_cli_capturing(capsys, "eval", *world.eval, "--out", world.out)[0] == 0
    good = world.out / "results.csv"
    bad = results_with(good, world.root / "bad.csv", n=n)
    code, err = run_cli_capturing(capsys, "regress", *((bad, good) if side == "baseline" else (good, bad)))
    assert code == 2
    assert_error_line(err, f"{bad} line 2: n is inf, not a whole number >= 0", "remove that line")


def test_report_markdown_escapes_html_in_model_names(world, capsys):
    ckpt = world.root / "m<script>alert(1)&x|y.pt"
    ckpt.write_bytes(world.ckpt.read_bytes())
    assert run_cli_capturing(capsys, "eval", "--ckpt", ckpt, *world.common, "--out", world.out)[0] == 0
    assert run_cli_capturing(capsys, "report", world.out, "--out", world.root / "report")[0] == 0
    md = (world.root / "report" / "report.md").read_text()
    assert "<script>" not in md
    assert "| m&lt;script&gt;alert(1)&amp;x\\|y |" in md


# entries refused with one line, changing nothing: (set up the input) -> (arguments, what the line names)

def eval_out_name_too_long(w):
    return ["eval", *w.eval, "--out", w.root / ("x" * 300) / "run"], ["holds a name of 300 bytes", "shorter --out"]


def eval_out_path_too_long(w):
    return ["eval", *w.eval, "--out", w.root.joinpath(*["y" * 200] * 20)], ["bytes long", "shorter --out"]


def calibrate_out_name_too_long(w):
    return [*calibrate_args(w, "--levels", "0.1"), "--out", w.root / ("x" * 300 + ".json")], \
        ["holds a name of 305 bytes", "shorter --out"]


def corrupt_out_name_too_long(w):
    return ["corrupt", "--dataset", "cifar10", "--data-dir", w.data, "--corruptions", "brightness", "--quiet",
            "--out", w.root / ("x" * 300)], ["holds a name of 300 bytes", "shorter --out"]


def checkpoint_name_not_utf8(w):
    ckpt = w.root / os.fsdecode(b"\xff.pt")
    ckpt.write_bytes(w.ckpt.read_bytes())
    return ["eval", "--ckpt", ckpt, *w.common, "--out", w.out], ["\\xff.pt", "not valid UTF-8", "copy the file"]


def lambda_overflowing(w):
    return ["eval", "--ckpt", sdnet_checkpoint(w), *w.common, "--lambda", "1e308", "--out", w.out], \
        ["--lambda 1e+308", "at most 100"]


def device_meta(w):
    return ["eval", *w.eval, "--device", "meta", "--out", w.out], ["--device meta", "use auto, cpu, cuda"]


def calibrate_level_overflowing(w):
    return [*calibrate_args(w, "--levels", "1e308"), "--out", w.root / "c.json"], \
        ["--levels 1e+308", "standard deviations in [0, 1]"]


def calibrate_level_nan(w):
    return [*calibrate_args(w, "--levels", "0.05,nan,-1"), "--out", w.root / "c.json"], ["--levels nan"]


def calibrate_level_infinite(w):
    return [*calibrate_args(w, "--levels", "0.1,inf"), "--out", w.root / "c.json"], ["--levels inf"]


def calibrate_level_a_pair_in_a_suite(w):
    (w.root / "levels.toml").write_text("corruptions = []\n[levels]\ngaussian_noise = [[0.1, 0.2]]\n")
    return [*calibrate_args(w, "--levels", w.root / "levels.toml"), "--out", w.root / "c.json"], \
        ["levels.toml", "gaussian_noise", "[0.1, 0.2]", "one number"]


def calibrate_lambda_overflowing(w):
    argv = calibrate_args(w, "--levels", "0.1,0.2", "--out", w.root / "c.json")
    argv[argv.index("--lambdas") + 1] = "1e39"
    return argv, ["lambda grid '1e39'", "0..100"]


ONE_LINE_REFUSALS = [eval_out_name_too_long, eval_out_path_too_long, calibrate_out_name_too_long,
                     corrupt_out_name_too_long, checkpoint_name_not_utf8, lambda_overflowing, device_meta,
                     calibrate_level_overflowing, calibrate_level_nan, calibrate_level_infinite,
                     calibrate_level_a_pair_in_a_suite, calibrate_lambda_overflowing]


@pytest.mark.parametrize("entry", ONE_LINE_REFUSALS, ids=lambda f: f.__name__)
def test_refused_in_one_line(world, capsys, entry):
    argv, names = entry(world)
    before = snapshot(world.root)
    code, err = run_cli_capturing(capsys, *argv)
    assert code == 2
    assert_error_line(err, *names)
    assert snapshot(world.root) == before


@pytest.mark.parametrize("levels,names", [
    ("gaussian_noise = [[0.1, 0.2]]", ["gaussian_noise", "[0.1, 0.2]", "one number"]),
    ("defocus_blur = [3]", ["defocus_blur", "level 3", "a list of 2 numbers"]),
    ("fog = [[0.2, 3, 1]]", ["fog", "a list of 2 numbers", "[0.2, 3]"]),
], ids=["a pair for a number", "a number for a pair", "three for a pair"])
def test_suite_levels_of_the_wrong_shape_are_refused_before_any_work(world, capsys, levels, names):
    suite = world.root / "odd.toml"
    suite.write_text(f'description = "odd"\ncorruptions = []\n[levels]\n{levels}\n')
    before = snapshot(world.root)
    code, err = run_eval(capsys, *world.eval, "--corruptions", suite, "--out", world.out)
    assert code == 2
    assert_error_line(err, "odd.toml", *names)
    assert snapshot(world.root) == before
    assert not world.out.exists()
