"""Pictures in the report: the corruption gallery shows the very images a run evaluated, and every --save-adv file
becomes a figure of adversarial examples with the classes the run predicted."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from robustlab.cli import main
from robustlab.corruptions.engine import corrupt
from robustlab.data import load_dataset
from robustlab.data.corrupted import GeneratedImageSet
from robustlab.reports.pictures import GALLERY_IMAGES, _adversarial_row, _corrupted, _images
from robustlab.reports.report import build_report
from robustlab.reports.runs import load_runs, outcome_loader

EVAL = ["eval", "--ckpt", "zoo:resnet18-fashion", "--dataset", "fashion-mnist", "--n", "32", "--batch-size", "16",
        "--corruptions", "gaussian_noise,fog", "--severities", "1,4", "--attack", "pgd-linf", "--eps",
        "2/255,4/255", "--steps", "2", "--save-adv", "--skip-diagnostics", "--quiet", "--seed", "7"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pictures") / "run"
    assert main([*EVAL, "--out", str(out)]) == 0
    return out


def test_the_gallery_shows_the_images_the_run_evaluated(run, tmp_path):
    _, runs, _ = load_runs([run])
    shown = range(GALLERY_IMAGES)
    clean, _ = _images(runs[0], shown)
    base = load_dataset("fashion-mnist")
    for corruption, severity in (("gaussian_noise", 1), ("fog", 4)):
        evaluated = GeneratedImageSet(base, corruption, severity, parameters="cifar", seed=7, cache_dir=tmp_path)
        images, _ = next(iter(evaluated.batches(GALLERY_IMAGES, GALLERY_IMAGES)))
        pictured = _corrupted(runs[0], clean, shown, corruption, severity)
        assert np.array_equal(pictured, images.permute(0, 2, 3, 1).numpy()), (corruption, severity)
        assert not np.array_equal(pictured, clean)
    other_seed = corrupt(clean, "gaussian_noise", 1, parameters="cifar", seed=8)
    assert not np.array_equal(_corrupted(runs[0], clean, shown, "gaussian_noise", 1), other_seed)


def test_a_manifest_naming_the_parameter_set_by_its_old_key_is_read(run):
    """Run manifests written before `table` was renamed `parameters` picture the images with the set they name."""
    _, runs, _ = load_runs([run])
    shown = range(2)
    clean, _ = _images(runs[0], shown)
    manifest = json.loads(json.dumps(runs[0].manifest))
    suite = manifest["corruption_suite"]
    assert suite.pop("parameters") == "cifar"
    suite["table"] = "imagenet"
    old = dataclasses.replace(runs[0], manifest=manifest)
    want = np.concatenate([corrupt(clean[k:k + 1], "gaussian_noise", 1, parameters="imagenet", seed=7, start=k,
                                   reencode=False)  # the run recorded no JPEG re-encoding
                           for k in shown])
    assert np.array_equal(_corrupted(old, clean, shown, "gaussian_noise", 1), want)
    assert not np.array_equal(_corrupted(runs[0], clean, shown, "gaussian_noise", 1), want), "the sets differ"


def test_the_report_holds_the_gallery_and_each_saved_attack(run, tmp_path):
    files = build_report([run], tmp_path / "report")
    names = {p.name for p in files.figures if p.suffix == ".png"}  # one file per figure: no two share a name
    assert "corruption-gallery-run.png" in names
    adversarial = [n for n in names if n.startswith("adversarial-")]
    assert len(adversarial) == len(list((run / "adversarial").glob("*.npz"))) == 2
    assert all((tmp_path / "report" / "figures" / n).is_file() for n in adversarial)
    page = files.html.read_text()
    assert "<h3>Corruptions as the model saw them (run)</h3>" in page
    assert page.count("<h3>Adversarial examples: pgd-linf") == 2
    assert page.count("data:image/png;base64") >= 3
    assert "corruption-gallery-run.png" in files.markdown.read_text()


def test_each_saved_file_is_matched_to_its_row(run):
    df, runs, _ = load_runs([run])
    for path in sorted((run / "adversarial").glob("*.npz")):
        row = _adversarial_row(df, runs[0], path)
        assert row is not None
        assert f"eps{row['eps']:.6f}" in path.name
        with np.load(path) as npz:
            assert int(npz["robust"].sum()) == int(row["correct"])


def test_a_run_whose_data_are_gone_reports_without_its_gallery(run, tmp_path):
    moved = tmp_path / "run"
    moved.mkdir()
    for name in ("results.csv", "outcomes"):
        (moved / name).symlink_to(run / name)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["arguments"].update(dataset="cifar10", data_dir=str(tmp_path / "gone"))  # data moved away
    (moved / "manifest.json").write_text(json.dumps(manifest))
    files = build_report([moved], tmp_path / "report")
    assert not any(p.name.startswith("corruption-gallery") for p in files.figures)
    assert any("corruption gallery of run run skipped" in w for w in files.warnings)


def test_sdnet_and_rdsn_failures_are_shown_side_by_side(tmp_path):
    out = tmp_path / "both"
    assert main(["eval", "--ckpt", "zoo:sdnet18-fashion,zoo:rdsn-fashion", "--dataset", "fashion-mnist", "--n", "48",
                 "--corruptions", "gaussian_noise,contrast", "--severities", "5", "--quiet", "--out", str(out)]) == 0
    df, _, _ = load_runs([out])
    load = outcome_loader()
    disagree = {}
    for corruption, rows in df[df["attack"] == "none"].groupby("corruption"):
        sdnet, rdsn = (load(rows[rows["arch"].str.contains(a)].iloc[0]) for a in ("sdnet", "rdsn"))
        disagree[corruption] = int((sdnet.ok != rdsn.ok).sum())
    files = build_report([out], tmp_path / "report")
    assert any(p.name == "failures-side-by-side.png" for p in files.figures)
    page = files.html.read_text()
    worst = max(disagree, key=disagree.get)
    cell = "clean" if worst == "none" else f"{worst} severity 5"
    assert f"fashion-mnist, {cell} (the cell where they disagree most, {disagree[worst]} images)" in page
