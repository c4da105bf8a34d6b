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
from tests.conftest import tiny_model, write_cifar, write_imagenet

N = 8  # test images
FIX_WORDS = ("pass", "use", "pick", "remove", "download", "copy", "free", "fix", "re-save", "store", "point",
             "multiply", "round", "rescale", "add", "did you mean")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_eval(capsys: pytest.CaptureFixture, *argv: Any) -> tuple[int, str]:
    code = main(["eval", *(str(a) for a in argv)])
    return code, capsys.readouterr().err


def assert_error_line(err: str, *names: str) -> None:
    """One line, `robustlab: error: ...`, naming each of `names`, ending in a fix."""
    assert err.startswith("robustlab: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)
    assert any(w in err.rsplit("; ", 1)[-1] for w in FIX_WORDS), f"no fix after the last '; ': {err}"


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
    assert err.count("\n") == 1 and "count as wrong" in err
    row = pd.read_csv(world.out / "results.csv").iloc[0]
    assert row["n"] == N and row["correct"] == 0 and row["accuracy"] == 0
    manifest = json.loads((world.out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["warnings"] == [err.strip().removeprefix("robustlab: ")]


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
    assert err.count("\n") == 1 and "mean nothing" in err and "retrain" in err


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
    counts = count_correct(_NanOnOddImages(), [(images, labels)], torch.device("cpu"), top5=True)
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
    assert len(rows) == 2 and list(rows["corruption"]) == ["none", "fog"]
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
    from robustlab.corruptions.writer import LAYOUT_FILE  # what robustlab records of the layout, for a resume
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
    assert list(rows["corruption"]) == ["none", "fog"] and list(rows["severity"]) == [0, 1]
    assert (rows["n"] == 3).all()
    status = json.loads((out / "manifest.json").read_text())["status"]
    assert status.startswith("failed: cannot decode") and str(broken) in status
