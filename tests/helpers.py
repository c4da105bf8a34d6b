"""Shared test helpers (torchvision keeps its own in datasets_utils.py): tiny files in the real on-disk formats,
tiny models, the CLI called in-process, checks of robustlab's one-line errors and of files left untouched, and a
headless-browser check of an HTML page."""
from __future__ import annotations

import csv
import gzip
import html
import json
import math
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from robustlab.adaptive import Calibration, Fit
from robustlab.cli import main
from robustlab.models import ModelConfig, RobustModel, build_net
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from robustlab.outcomes import Outcomes, read_outcomes
from robustlab.schema import COLUMNS, SCHEMA_VERSION, cell_key, wilson_interval

FIX_WORDS = ("pass", "use", "pick", "remove", "download", "copy", "free", "fix", "re-save", "store", "point",
             "multiply", "round", "rescale", "add", "did you mean")


def run_cli(*argv: Any) -> int:
    """`robustlab ARGV...` in this process; its exit code."""
    return main([str(a) for a in argv])


def write_cifar(root: Path, *, classes: int = 10, n_test: int = 24, n_train: int = 0, seed: int = 0) -> Path:
    """CIFAR-10 (`cifar-10-batches-py/`) or CIFAR-100 (`cifar-100-python/`) pickles as torchvision stores them."""
    rng = np.random.default_rng(seed)
    label_key = "labels" if classes == 10 else "fine_labels"
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        return {b"batch_label": b"fixture", label_key.encode(): rng.integers(0, classes, n).tolist(),
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"filenames": [f"img{i}.png".encode() for i in range(n)]}

    names = (["test_batch"], [f"data_batch_{i}" for i in range(1, 6)]) if classes == 10 else (["test"], ["train"])
    for name in names[0]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(n_test), f)
    if n_train:
        for name in names[1]:
            with open(folder / name, "wb") as f:
                pickle.dump(batch(n_train), f)
    return folder


def write_imagenet(root: Path, *, classes: int = 3, per_class: int = 2, seed: int = 0) -> Path:
    """ImageNet val as class folders of JPEGs of assorted sizes."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = 240 + 10 * i, 300 - 10 * c
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.JPEG", quality=90)
    return root


def write_idx(root: Path, *, split: str = "test", n: int = 12, seed: int = 0, gz: bool = True) -> Path:
    """MNIST-family IDX files (`t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`) as Debian and
    torchvision's raw/ folder hold them."""
    rng = np.random.default_rng(seed)
    prefix = {"train": "train", "test": "t10k"}[split]
    root.mkdir(parents=True, exist_ok=True)
    for kind, magic, data in (("images-idx3", 2051, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                              ("labels-idx1", 2049, rng.integers(0, 10, n, dtype=np.uint8))):
        raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape) + data.tobytes()
        path = root / (f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
    return root


def tiny_model(arch: str = "sdnet18", *, num_classes: int = 10, size: int = 32, seed: int = 0,
               **kwargs) -> RobustModel:
    imagenet = size > 64
    cfg = ModelConfig(arch=arch, num_classes=num_classes, input_size=size,
                      mean=IMAGENET_MEAN if imagenet else CIFAR_MEAN, std=IMAGENET_STD if imagenet else CIFAR_STD,
                      dataset="imagenet" if imagenet else "cifar10",
                      arch_kwargs={"width": 0.125, "stem": "imagenet" if imagenet else "cifar", **kwargs})
    torch.manual_seed(seed)
    return RobustModel(build_net(cfg), cfg).eval()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_error_line(err: str, *names: str) -> None:
    """One line, `robustlab: error: ...`, naming each of `names`, ending in a fix."""
    assert err.startswith("robustlab: error: "), err
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)
    assert any(w in err.rsplit("; ", 1)[-1] for w in FIX_WORDS), f"no fix after the last '; ': {err}"


def chromium_path() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_check(page: Path, profile: Path) -> dict:
    """Open a page in headless Chromium (offline) and return the JSON its script wrote into
    <pre id="robustlab-check">."""
    cmd = [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="robustlab-check">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"no check result in the DOM (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


def row(model: str, *, arch: str = "sdnet18", corruption: str = "none", severity: int = 0, attack: str = "none",
        source: str = "", norm: str = "none", eps: float = math.nan, steps: int = 0, mode: str = "fixed",
        lam: float = math.nan, lam_std: float = math.nan, n: int = 100, correct: int = 90, flags: str = "",
        dataset: str = "digits") -> dict:
    lo, hi = wilson_interval(correct, n)
    values = {"model": model, "arch": arch, "checkpoint_sha256": "ab" * 32, "dataset": dataset, "split": "test",
              "corruption": corruption, "severity": severity, "attack": attack, "attack_source": source, "norm": norm,
              "eps": eps, "steps": steps, "restarts": 1 if attack != "none" else 0, "lambda_mode": mode,
              "lambda": lam, "lambda_std": lam_std, "n": n, "correct": correct, "accuracy": correct / n,
              "ci_low": lo, "ci_high": hi, "top5_correct": math.nan, "top5_accuracy": math.nan,
              "residual_mean": math.nan, "flags": flags, "seconds": 0.1, "seed": 0, "robustlab_version": "0.1.0",
              "schema_version": SCHEMA_VERSION}
    return {c: values.get(c, "") for c in COLUMNS}  # whatever the schema holds today


def read_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def outcomes_of(run: Path, row: dict[str, str]) -> Outcomes:
    return read_outcomes(run, row["outcomes"], key=cell_key(row), image_set=row["image_set"], n=int(row["n"]),
                         correct=int(row["correct"]))


def make_calibration(grid: Sequence[float], a: float, b: float, sha: str = "x" * 64) -> Calibration:
    """A calibration with the line lambda = a r + b over `grid` (its sweep a single placeholder point)."""
    return Calibration(checkpoint_sha256=sha, arch="sdnet18", layer=0, noise="gaussian", grid=list(grid),
                       levels=[0.1], sweep=[{"level": 0.1, "lambda": grid[0], "accuracy": 1.0, "residual_mean": 1.0,
                                             "n": 1}], points=[{"level": 0.1, "lambda": grid[0], "residual": 1.0,
                                                                 "accuracy": 1.0}],
                       fit=Fit(a, b, 1.0), calibration_split="digits/train", n=1, seed=0)
