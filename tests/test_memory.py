"""Evaluation memory: corrupted splits stream from disk by rows, and a CUDA out-of-memory error halves the batch
(simulated on the CPU by a model that raises it above a batch size)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from robustlab.attacks import make_spec
from robustlab.checkpoints import save_checkpoint
from robustlab.cli import main
from robustlab.counting import BatchLimit, RunInfo, count_correct, count_robust, numbered
from robustlab.data import ArrayImageSet
from robustlab.data.corrupted import load_cifar_c
from robustlab.data.npy import NpyRows, NpyWriter
from robustlab.errors import RobustlabError
from robustlab.models import RobustModel
from tests.helpers import tiny_model, write_cifar


def test_npy_rows_read_what_numpy_wrote(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (11, 4, 5, 3), dtype=np.uint8)
    path = tmp_path / "a.npy"
    with NpyWriter(path, array.shape, np.uint8) as writer:
        for piece in np.array_split(array, 3):
            writer.append(piece)
    assert np.array_equal(np.load(path), array)
    rows = NpyRows(path)
    assert rows.shape == array.shape
    assert rows.dtype == np.uint8
    assert len(rows) == 11
    assert np.array_equal(rows[2:7], array[2:7])
    assert np.array_equal(rows[9:20], array[9:])
    assert np.array_equal(rows[np.array([8, 1, 4])], array[[8, 1, 4]])
    assert rows[5:5].shape == (0, 4, 5, 3)
    block = NpyRows(path, 3, 8)
    assert block.shape == (5, 4, 5, 3)
    assert np.array_equal(block[1:3], array[4:6])
    assert rows[2:4].flags.writeable, "torch.from_numpy wants a writable array"


def test_npy_writer_publishes_only_complete_files(tmp_path):
    path = tmp_path / "a.npy"
    with pytest.raises(KeyboardInterrupt), NpyWriter(path, (4, 2), np.uint8) as writer:
        writer.append(np.zeros((2, 2), np.uint8))
        raise KeyboardInterrupt
    with NpyWriter(path, (4, 2), np.uint8) as writer:
        writer.append(np.zeros((3, 2), np.uint8))  # one row short
    assert list(tmp_path.iterdir()) == []


def test_truncated_npy_is_refused_when_opened(tmp_path):
    path = tmp_path / "fog.npy"
    np.save(path, np.zeros((10, 32, 32, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RobustlabError, match=r"fog.npy is truncated .*copy it again"):
        NpyRows(path)


def test_cifar_c_blocks_stream_from_the_file(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5 * 6, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(30) % 10)
    data = load_cifar_c(tmp_path, "fog", 4, name="cifar10", num_classes=10)
    assert isinstance(data.images, NpyRows), "a memory map would keep every page it read resident"
    got = torch.cat([x for x, _ in data.batches(4)]).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(got, images[18:24])
    assert list(data.label_array()) == [8, 9, 0, 1, 2, 3]


class _SmallDevice(nn.Module):
    """A model on a 'device' that runs out of memory above `fits` images per forward."""

    def __init__(self, model: nn.Module, fits: int) -> None:
        super().__init__()
        self.model, self.fits = model, fits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} images")
        return self.model(x)


@pytest.fixture(scope="module")
def digits_like() -> ArrayImageSet:
    rng = np.random.default_rng(2)
    return ArrayImageSet(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8),
                         name="random", split="test", num_classes=10)


def test_out_of_memory_halves_the_batch_and_counts_the_same(digits_like):
    model, cpu = tiny_model("resnet18"), torch.device("cpu")
    expected = count_correct(model, numbered(digits_like.batches(4)), cpu, top5=True)
    said = []
    limit = BatchLimit(said.append)
    got = count_correct(_SmallDevice(model, fits=1), numbered(digits_like.batches(4)), cpu, top5=True, limit=limit)
    assert (got.n, got.correct, got.top5_correct) == (expected.n, expected.correct, expected.top5_correct)
    assert said == ["CUDA out of memory at batch size 4; retrying at 2",
                    "CUDA out of memory at batch size 2; retrying at 1"], "once per halving, not per batch"
    assert limit.size == 1


def test_out_of_memory_under_attack_equals_a_run_at_the_smaller_batch(digits_like):
    model, spec = tiny_model("resnet18"), make_spec("pgd-linf", eps="2/255", steps=1)
    info = RunInfo(seed=0, batch_size=2, device=torch.device("cpu"), diagnostics=False)
    at_two = count_robust(model, numbered(digits_like.batches(2, 4)), spec, info)
    said = []
    halved = RunInfo(seed=0, batch_size=4, device=torch.device("cpu"), diagnostics=False,
                     limit=BatchLimit(said.append))
    got = count_robust(_SmallDevice(model, fits=2).eval(), numbered(digits_like.batches(4, 4)), spec, halved)
    assert (got.n, got.correct) == (at_two.n, at_two.correct)  # random starts are seeded by image index
    assert said == ["CUDA out of memory at batch size 4; retrying at 2"]


def test_out_of_memory_at_one_image_is_an_error(digits_like):
    with pytest.raises(RobustlabError, match="CUDA out of memory at batch size 1; free GPU memory"):
        count_correct(_SmallDevice(tiny_model("resnet18"), fits=0), numbered(digits_like.batches(4)),
                      torch.device("cpu"), top5=False)


def test_eval_says_it_halved_the_batch(tmp_path, capsys, monkeypatch):
    data = write_cifar(tmp_path / "data", n_test=12)
    save_checkpoint(tiny_model("resnet18"), tmp_path / "r18.pt")
    argv = ["eval", "--ckpt", str(tmp_path / "r18.pt"), "--dataset", "cifar10", "--data-dir", str(data),
            "--batch-size", "8", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    forward = RobustModel.forward

    def forward_on_a_small_device(self: RobustModel, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return forward(self, x)

    monkeypatch.setattr(RobustModel, "forward", forward_on_a_small_device)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "halved")]) == 0
    message = "CUDA out of memory at batch size 8; retrying at 4"
    assert capsys.readouterr().err == f"robustlab: {message}\n"
    assert json.loads((tmp_path / "halved" / "manifest.json").read_text())["warnings"] == [message]
    plain, halved = (pd.read_csv(tmp_path / d / "results.csv") for d in ("plain", "halved"))
    assert list(halved["correct"]) == list(plain["correct"])
    assert list(halved["n"]) == [12]
