"""Corruption suites, the C-layout writer and readers, `eval --corruptions` and the corruption metrics."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from robustlab.cli import main
from robustlab.corruptions import corrupt
from robustlab.corruptions.suites import load_corruption_suite
from robustlab.data import load_dataset
from robustlab.errors import RobustlabError
from robustlab.reports.metrics import ALEXNET_ERROR, corruption_summary
from tests.helpers import run_cli, write_imagenet


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))


def test_shipped_suites_parse():
    assert len(load_corruption_suite("cifar10-c").cells) == 75
    assert load_corruption_suite("imagenet-c").parameters == "imagenet"
    calib = load_corruption_suite("noise-calibration")
    gauss = [c.param for c in calib.cells if c.corruption == "gaussian_noise"]
    assert gauss[0] == pytest.approx(0.02)
    assert gauss[-1] == pytest.approx(0.20)
    assert len(gauss) == 10


@pytest.mark.parametrize("text,match", [
    ('corruptions = ["gaussian_nois"]\n', "line 1 .*did you mean gaussian_noise"),
    ('corruptions = ["fog"]\nseverities = [0, 6]\n', "line 2 .*severities"),
    ('parameters = "cifar"\ncorruptions = ["fog"]\ncolour = 3\n', "line 3 .*unknown key"),
    ('parameters = "cifr"\ncorruptions = ["fog"]\n', "line 1 .*'cifr' is not a parameter set"),
    ('corruptions = ["fog"]\ntable = "cifr"\n', r"line 2 \(table\): 'cifr' is not a parameter set"),
    ('corruptions = ["fog"]\nparameters = "cifar"\ntable = "cifar"\n', "line 3 .*old name of parameters"),
    ('[levels]\ngaussian_noise = ["high"]\n', "line 2 .*not a number"),
    ('corruptions = ["fog"\n', "invalid TOML"),
    ('description = "nothing"\n', "corruption names"),
])
def test_invalid_suite_names_line_and_reason(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RobustlabError, match=match):
        load_corruption_suite(path)


def test_a_suite_naming_its_parameter_set_by_the_old_key_still_loads(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text('table = "imagenet"\ncorruptions = ["fog"]\n')
    assert load_corruption_suite(path).parameters == "imagenet"


def test_user_suite_with_own_levels_needs_no_code(tmp_path):
    path = tmp_path / "sigma.toml"
    path.write_text('description = "gaussian noise sigma 0.02..0.30"\n[levels]\n'
                    'gaussian_noise = [0.02, 0.1, 0.3]\n')
    out = tmp_path / "run"
    assert run_cli("eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--corruptions", path, "--n", 40,
                   "--out", out, "--quiet") == 0
    df = pd.read_csv(out / "results.csv")
    noisy = df[df["corruption"] == "gaussian_noise"].sort_values("severity")
    assert list(noisy["severity"]) == [1, 2, 3]
    assert noisy["accuracy"].iloc[0] >= noisy["accuracy"].iloc[2]
    import json
    levels = json.loads((out / "manifest.json").read_text())["corruption_suite"]["levels"]
    assert levels == {"gaussian_noise-1": 0.02, "gaussian_noise-2": 0.1, "gaussian_noise-3": 0.3}


def test_corrupt_writes_the_published_layout_and_eval_reads_it_back(tmp_path):
    out = tmp_path / "digits-c"
    assert run_cli("corrupt", "--dataset", "digits", "--out", out, "--corruptions", "gaussian_noise,contrast",
                   "--n", 20, "--quiet") == 0
    arr = np.load(out / "gaussian_noise.npy")
    labels = np.load(out / "labels.npy")
    assert arr.shape == (100, 32, 32, 3)
    assert arr.dtype == np.uint8
    assert labels.shape == (100,)
    clean = load_dataset("digits")
    expected = corrupt(clean.images[:20], "gaussian_noise", 3, parameters="cifar", seed=0)
    assert np.array_equal(arr[40:60], expected), "severity 3 must be the third block of N"
    assert np.array_equal(labels[:20], clean.labels[:20])
    assert np.array_equal(labels[80:], clean.labels[:20])
    assert not list(out.glob("*.tmp"))


def test_eval_from_c_dir_equals_generated(tmp_path):
    from tests.helpers import write_cifar
    data = write_cifar(tmp_path / "data", n_test=16)
    cdir = tmp_path / "c"
    assert run_cli("corrupt", "--dataset", "cifar10", "--data-dir", data, "--out", cdir,
                   "--corruptions", "impulse_noise,pixelate", "--quiet") == 0
    from robustlab.checkpoints import save_checkpoint
    from tests.helpers import tiny_model
    ckpt = tmp_path / "m.pt"
    save_checkpoint(tiny_model("sdnet18"), ckpt)
    common = ["eval", "--ckpt", ckpt, "--dataset", "cifar10", "--data-dir", data, "--corruptions",
              "impulse_noise,pixelate", "--severities", "2,5", "--quiet"]
    assert run_cli(*common, "--c-dir", cdir, "--out", tmp_path / "read") == 0
    assert run_cli(*common, "--out", tmp_path / "gen") == 0
    read = pd.read_csv(tmp_path / "read" / "results.csv")
    gen = pd.read_csv(tmp_path / "gen" / "results.csv")
    assert len(read) == 5
    assert list(read["correct"]) == list(gen["correct"])
    assert list(read["split"].unique()) == ["test"]
    # a second generated run reads the cache and gives the same rows
    assert run_cli(*common, "--out", tmp_path / "again") == 0
    assert list(pd.read_csv(tmp_path / "again" / "results.csv")["correct"]) == list(gen["correct"])


def test_c_dir_errors(tmp_path, capsys):
    from tests.helpers import write_cifar
    data = write_cifar(tmp_path / "data", n_test=8)
    cdir = tmp_path / "c"
    cdir.mkdir()
    np.save(cdir / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    np.save(cdir / "labels.npy", np.zeros(7, np.int64))
    from robustlab.checkpoints import save_checkpoint
    from tests.helpers import tiny_model
    save_checkpoint(tiny_model("sdnet18"), tmp_path / "m.pt")
    base = ["eval", "--ckpt", tmp_path / "m.pt", "--dataset", "cifar10", "--data-dir", data, "--c-dir", cdir,
            "--out", tmp_path / "run"]
    for corruptions, expected in [("snow", "snow.npy is missing"), ("fog", "7 labels for 10 images")]:
        assert run_cli(*base, "--corruptions", corruptions) == 2
        err = capsys.readouterr().err
        assert expected in err
        assert err.count("\n") == 1
        assert not (tmp_path / "run").exists()
    np.save(cdir / "fog.npy", np.zeros((10, 32, 32), np.uint8))
    assert run_cli(*base, "--corruptions", "fog") == 2
    assert "expected (5*N, H, W, 3)" in capsys.readouterr().err


def test_imagenet_c_folders(tmp_path):
    cdir = tmp_path / "imagenet-c"
    for sev in (1, 2):
        write_imagenet(cdir / "fog" / str(sev), classes=3, per_class=1, seed=sev)
    val = write_imagenet(tmp_path / "val", classes=3, per_class=1)
    from robustlab.checkpoints import save_checkpoint
    from tests.helpers import tiny_model
    save_checkpoint(tiny_model("resnet18", num_classes=3, size=224), tmp_path / "m.pt")
    assert run_cli("eval", "--ckpt", tmp_path / "m.pt", "--dataset", "imagenet", "--data-dir", val, "--corruptions",
                   "fog", "--severities", "1,2", "--c-dir", cdir, "--out", tmp_path / "run", "--quiet") == 0
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(df["corruption"]) == ["none", "fog", "fog"]
    assert (df["n"] == 3).all()


def _rows(model, clean_acc, accs):
    rows = [dict(model=model, attack="none", corruption="none", severity=0, accuracy=clean_acc)]
    rows += [dict(model=model, attack="none", corruption=c, severity=s, accuracy=a) for (c, s), a in accs.items()]
    return rows


def test_metrics_match_hand_computation():
    a = {("fog", 1): 0.8, ("fog", 2): 0.6, ("snow", 1): 0.7, ("snow", 2): 0.5, ("saturate", 1): 0.1}
    b = {("fog", 1): 0.6, ("fog", 2): 0.4, ("snow", 1): 0.5, ("snow", 2): 0.3}
    df = pd.DataFrame(_rows("a", 0.9, a) + _rows("b", 0.8, b))
    s = corruption_summary(df, baseline="b").set_index("model")
    assert s.loc["a", "mean_corruption_accuracy"] == pytest.approx(0.65)  # saturate is an extra corruption
    ce_fog, ce_snow = (0.2 + 0.4) / (0.4 + 0.6), (0.3 + 0.5) / (0.5 + 0.7)
    assert s.loc["a", "mCE"] == pytest.approx((ce_fog + ce_snow) / 2)
    rel_fog, rel_snow = (0.1 + 0.3) / (0.2 + 0.4), (0.2 + 0.4) / (0.3 + 0.5)
    assert s.loc["a", "relative_mCE"] == pytest.approx((rel_fog + rel_snow) / 2)
    assert s.loc["b", "mCE"] == pytest.approx(1.0)


def test_alexnet_normalized_mce():
    accs = {("fog", s): 0.5 for s in range(1, 6)} | {("snow", s): 0.4 for s in range(1, 4)}
    df = pd.DataFrame(_rows("m", 0.7, accs))
    s = corruption_summary(df, alexnet=True).iloc[0]
    assert s["alexnet_mCE"] == pytest.approx(0.5 / ALEXNET_ERROR["fog"])  # snow lacks severities 4, 5
    assert s["alexnet_relative_mCE"] == pytest.approx((0.5 - 0.3) / (ALEXNET_ERROR["fog"] - 0.4348))
    assert math.isnan(corruption_summary(df).iloc[0].get("mCE", math.nan))


def test_generated_cache_hit_returns_the_same_images_and_labels(tmp_path):
    from robustlab.data.corrupted import GeneratedImageSet
    base = load_dataset("digits")
    gen = GeneratedImageSet(base, "gaussian_noise", 2, parameters="cifar", seed=3, cache_dir=tmp_path)
    first = list(gen.batches(7, 20))
    assert len(list(tmp_path.glob("*.npy"))) == 1, "a complete pass writes the cache"
    again = list(gen.batches(5, 20))  # read from the cache, other batch size
    for i in (0, 1):
        a = np.concatenate([b[i].numpy() for b in first])
        b = np.concatenate([b[i].numpy() for b in again])
        assert np.array_equal(a, b)
    assert np.array_equal(np.concatenate([b[1].numpy() for b in again]), base.labels[:20])


def test_a_cache_pass_removes_only_its_own_stale_temporaries(tmp_path):
    """A killed pass leaves its cache file's temporary behind: the next pass removes it once stale, and leaves a fresh
    one (another process may be writing it) and the temporaries of other files."""
    import os
    import time

    from robustlab.data.corrupted import CACHE_STALE_SECONDS, GeneratedImageSet
    gen = GeneratedImageSet(load_dataset("digits"), "gaussian_noise", 2, parameters="cifar", seed=3, cache_dir=tmp_path)
    cache = gen._cache_path(gen._cache_key(20))
    stale, fresh = tmp_path / f".{cache.name}.dead1234.tmp", tmp_path / f".{cache.name}.live5678.tmp"
    other = tmp_path / f".other-{cache.name}.dead1234.tmp"
    old = time.time() - CACHE_STALE_SECONDS - 60
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    for path in (stale, other):
        os.utime(path, (old, old))
    list(gen.batches(7, 20))
    assert not stale.exists(), "the stale temporary of this cache file is removed"
    assert fresh.exists(), "a fresh temporary may belong to a live writer"
    assert other.exists(), "another file's temporary is not this pass's to remove"


def test_a_shard_reads_only_its_own_batches(tmp_path, monkeypatch):
    """Under torchrun each reader yields rank r's batches (r, r + world, ...) exactly as the whole split has them,
    and reads, decodes and corrupts no other image; a shard writes no cache (it holds only part of the split)."""
    import robustlab.corruptions.pool as pool
    import robustlab.data.imagenet as imagenet
    from robustlab.data import ArrayImageSet
    from robustlab.data.corrupted import GeneratedImageSet
    from robustlab.data.imagenet import FolderImageSet
    from robustlab.distributed import Shard

    rng = np.random.default_rng(0)
    arrays = ArrayImageSet(rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 23),
                           name="cifar10", split="test", num_classes=10)
    folders = FolderImageSet(write_imagenet(tmp_path / "val", classes=3, per_class=3), name="imagenet",
                             split="val", workers=0)
    decoded, corrupted = [], []
    real_decode, real_corrupt = imagenet._Decoded.__getitem__, pool.corrupt
    monkeypatch.setattr(imagenet._Decoded, "__getitem__", lambda self, i: decoded.append(self.files[i]) or
                        real_decode(self, i))
    monkeypatch.setattr(pool, "corrupt", lambda x, *a, **k: corrupted.append(len(x)) or
                        real_corrupt(x, *a, **k))

    def generated(cache: str) -> GeneratedImageSet:
        return GeneratedImageSet(arrays, "gaussian_noise", 3, parameters="cifar", seed=1, cache_dir=tmp_path / cache)

    for data, batch, n in [(arrays, 5, None), (folders, 2, 7), (generated("whole"), 5, 21)]:
        whole = list(data.batches(batch, n))
        for world in (2, 3):
            for rank in range(world):
                decoded.clear(), corrupted.clear()
                got = list((generated(f"shard{world}") if isinstance(data, GeneratedImageSet) else data).batches(
                    batch, n, shard=Shard(rank, world)))
                want = whole[rank::world]
                assert len(got) == len(want), (type(data).__name__, rank, world)
                for (gi, gl), (wi, wl) in zip(got, want):
                    assert torch.equal(gi, wi)
                    assert torch.equal(gl, wl)
                if isinstance(data, FolderImageSet):
                    assert len(decoded) == sum(len(b[1]) for b in want)
                if isinstance(data, GeneratedImageSet):
                    assert corrupted == [len(b[1]) for b in want]
                    assert not list((tmp_path / f"shard{world}").glob("*.npy")), "a shard must not cache a part"
    # a whole cache, once written, serves shards too (read by rows, nothing generated)
    corrupted.clear()
    got = list(generated("whole").batches(5, 21, shard=Shard(1, 2)))
    assert corrupted == []
    assert len(got) == 2


def test_calibration_levels_are_the_official_aranges():
    from robustlab.adaptive import calibration_levels
    official = {"gaussian": np.arange(0.02, 0.22, 0.02), "shot": np.arange(60, 0, -6),
                "speckle": np.arange(0.1, 0.7, 0.1), "impulse": np.arange(0.03, 0.3, 0.03)}
    for noise, want in official.items():
        assert calibration_levels(noise) == pytest.approx(list(want)), noise
    fine = calibration_levels("speckle", "noise-calibration-fine")
    assert len(fine) == 11
    assert fine[1] == pytest.approx(0.15)


def test_mce_says_how_many_corruptions_it_covers():
    # the baseline's snow errors equal its clean error: relative CE of snow is undefined (zero denominator)
    a = {("fog", 1): 0.8, ("fog", 2): 0.6, ("snow", 1): 0.7, ("snow", 2): 0.5}
    b = {("fog", 1): 0.6, ("fog", 2): 0.4, ("snow", 1): 0.8, ("snow", 2): 0.8}
    s = corruption_summary(pd.DataFrame(_rows("a", 0.9, a) + _rows("b", 0.8, b)), baseline="b").set_index("model")
    assert s.loc["a", "mCE_corruptions"] == 2
    assert s.loc["a", "relative_mCE_corruptions"] == 1
    assert s.loc["a", "relative_mCE"] == pytest.approx((0.1 + 0.3) / (0.2 + 0.4))
    accs = {("fog", sev): 0.5 for sev in range(1, 6)} | {("snow", sev): 0.4 for sev in range(1, 4)}
    alex = corruption_summary(pd.DataFrame(_rows("m", 0.7, accs)), alexnet=True).iloc[0]
    assert alex["alexnet_mCE_corruptions"] == 1


def test_metrics_refuse_to_average_cells_of_different_sizes():
    rows = [{**r, "n": 200 if r["corruption"] == "none" else 450}
            for r in _rows("a", 0.9, {("fog", 1): 0.8, ("fog", 2): 0.6})]
    with pytest.raises(RobustlabError, match="different numbers of images \\(200, 450\\)"):
        corruption_summary(pd.DataFrame(rows))


def test_corrupt_gives_the_same_bytes_with_a_pool_of_workers(tmp_path):
    for workers in (1, 2):
        assert main(["corrupt", "--dataset", "digits", "--n", "12", "--batch-size", "5", "--corruptions",
                     "gaussian_noise,glass_blur", "--workers", str(workers), "--out", str(tmp_path / f"w{workers}"),
                     "--quiet"]) == 0
    for name in ("gaussian_noise.npy", "glass_blur.npy", "labels.npy"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_corrupt_shared_by_ranks_gives_the_same_bytes_and_resumes(tmp_path, monkeypatch, capsys):
    """Ranks (as torchrun starts them: RANK, WORLD_SIZE) write their shares; the one completing a corruption's last
    share assembles it, byte for byte the single-process file; a rank restarted after finishing its share
    corrupts nothing again."""
    import robustlab.corruptions.pool as pool
    args = ["corrupt", "--dataset", "digits", "--n", "12", "--batch-size", "5", "--corruptions",
            "gaussian_noise,glass_blur", "--workers", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0

    def rank(r: int, world: int) -> str:
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        assert main([*args, "--out", str(tmp_path / f"of{world}")]) == 0
        return capsys.readouterr().out
    assert "rank 1 of 2: 0 of 2 corruptions complete" in rank(1, 2)
    assert not (tmp_path / "of2" / "gaussian_noise.npy").exists()
    assert "rank 0 of 2: 2 of 2 corruptions complete" in rank(0, 2)
    rank(0, 3)
    monkeypatch.setattr(pool, "corrupt", lambda *a, **k: pytest.fail("a finished share was corrupted again"))
    rank(0, 3)
    monkeypatch.undo()
    rank(2, 3)
    rank(1, 3)
    for r in (3, 1, 0, 2):  # 4 ranks, 3 batches: rank 3 has no share
        rank(r, 4)
    for world in (2, 3, 4):
        assert sorted(p.name for p in (tmp_path / f"of{world}").iterdir()) == sorted(
            p.name for p in (tmp_path / "one").iterdir()), "the parts are gone once assembled"
        for name in ("gaussian_noise.npy", "glass_blur.npy", "labels.npy"):
            assert (tmp_path / f"of{world}" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    (tmp_path / "of2" / "glass_blur.npy").write_bytes(b"stale")  # --overwrite regenerates a finished file
    assert main([*args, "--out", str(tmp_path / "of2"), "--overwrite"]) == 0
    assert (tmp_path / "of2" / "glass_blur.npy").read_bytes() == (tmp_path / "one" / "glass_blur.npy").read_bytes()


def test_corrupt_under_torchrun(tmp_path):
    """Two ranks at once, started by torchrun itself: the layout equals the single-process one."""
    import subprocess
    import sys
    # no --n: torchrun's own parser takes it for an abbreviation of its options
    args = ["corrupt", "--dataset", "digits", "--batch-size", "100", "--corruptions", "gaussian_noise,contrast",
            "--workers", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "robustlab", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("gaussian_noise.npy", "contrast.npy", "labels.npy"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert not (tmp_path / "two" / ".parts").exists()


@pytest.mark.parametrize("level,words", [("nan", "finite"), ("inf", "finite"), ("-0.1", ">= 0"),
                                         ("1e6", "over 100x the largest published")])
def test_suite_levels_must_be_sane(tmp_path, level, words):
    path = tmp_path / "s.toml"
    path.write_text(f"[levels]\ngaussian_noise = [0.02, {level}]\n")
    with pytest.raises(RobustlabError, match=words):
        load_corruption_suite(path)


def test_eval_generates_the_same_corruptions_with_a_pool_of_workers(tmp_path, monkeypatch):
    """eval's generated cells through 2 worker processes: the same cached bytes and the same rows as in-process."""
    rows = {}
    for workers in (1, 2):
        monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / f"cache{workers}"))
        out = tmp_path / f"run{workers}"
        assert main(["eval", "--ckpt", "zoo:resnet18-digits", "--dataset", "digits", "--n", "40", "--batch-size",
                     "16", "--corruptions", "glass_blur,gaussian_noise", "--severities", "3", "--workers",
                     str(workers), "--out", str(out), "--quiet"]) == 0
        rows[workers] = pd.read_csv(out / "results.csv")[["corruption", "severity", "correct"]]
    pd.testing.assert_frame_equal(rows[1], rows[2])
    caches = [sorted((tmp_path / f"cache{w}" / "corruptions").glob("*.npy")) for w in (1, 2)]
    assert len(caches[0]) == 2
    assert [p.name for p in caches[0]] == [p.name for p in caches[1]]
    for one, two in zip(*caches):
        assert one.read_bytes() == two.read_bytes(), one.name


def test_corrupt_writes_imagenet_c_folders_that_read_back_as_generated(tmp_path, monkeypatch, capsys):
    """ImageNet: the published layout <corruption>/<severity>/<wnid>/<file>.JPEG, saved at quality 85 as
    make_imagenet_c.py saves; read back through --c-dir's reader they are the pixels eval generates (which
    re-encode the same way). Two ranks write the same files; a restarted rank corrupts nothing again."""
    import robustlab.corruptions.pool as pool
    from robustlab.data.corrupted import GeneratedImageSet, load_imagenet_c
    from robustlab.data.imagenet import FolderImageSet
    from tests.helpers import write_imagenet
    write_imagenet(tmp_path / "val", classes=2, per_class=3)
    args = ["corrupt", "--dataset", "imagenet", "--data-dir", str(tmp_path), "--corruptions",
            "gaussian_noise,contrast", "--batch-size", "2", "--workers", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.JPEG"))
    assert len(files) == 2 * 5 * 6
    assert str(files[0]) == "contrast/1/n00000000/img0.JPEG"
    base = FolderImageSet(tmp_path / "val", name="imagenet", split="val", workers=0)
    for name in ("gaussian_noise", "contrast"):
        for severity in (1, 5):
            read = load_imagenet_c(tmp_path / "one", name, severity)
            read.workers = 0
            generated = GeneratedImageSet(base, name, severity, parameters="imagenet", seed=0)
            for (a, la), (b, lb) in zip(read.batches(3), generated.batches(3)):
                assert torch.equal(a, b), (name, severity)
                assert torch.equal(la, lb), (name, severity)
    for r in (1, 0):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main([*args, "--out", str(tmp_path / "two")]) == 0
    assert "rank 0 of 2: 2 of 2 corruptions complete" in capsys.readouterr().out
    for f in files:
        assert (tmp_path / "two" / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f
    monkeypatch.setattr(pool, "corrupt", lambda *a, **k: pytest.fail("finished files were corrupted again"))
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
