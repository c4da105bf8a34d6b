"""robustlab report: tables in report.md and report.html, figure files, a self-contained HTML (checked in headless
Chromium when it is installed)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from robustlab.errors import RobustlabError
from robustlab.reports.report import TABLES, build_report, format_eps, variant_colors
from robustlab.schema import COLUMNS, SCHEMA_VERSION
from tests.helpers import chromium_check, chromium_path, row

CORRUPTIONS = ["gaussian_noise", "fog"]


def synthetic_rows() -> list[dict]:
    """An SDNet with a lambda sweep (3 fixed lambdas) and both adaptive modes, a ResNet, corruptions at
    severities 1..3, white-box PGD at two eps with a flag, and a transfer attack."""
    rows = []
    settings = [("fixed", 0.1, math.nan, 0), ("fixed", 0.2, math.nan, -3), ("fixed", 0.3, math.nan, -8),
                ("adaptive-set", 0.2, math.nan, 1), ("adaptive-image", 0.17, 0.04, 2)]
    for mode, lam, std, shift in settings:
        rows.append(row("sdnet-a", mode=mode, lam=lam, lam_std=std, correct=92 + min(shift, 0)))
        for c in CORRUPTIONS:
            for s in (1, 2, 3):
                rows.append(row("sdnet-a", corruption=c, severity=s, mode=mode, lam=lam, lam_std=std,
                                correct=85 - 10 * s + shift + 5 * (c == "fog")))
    rows.append(row("resnet-b", arch="resnet18", mode="n.a.", correct=95))
    for c in CORRUPTIONS:
        for s in (1, 2, 3):
            rows.append(row("resnet-b", arch="resnet18", corruption=c, severity=s, mode="n.a.", correct=80 - 12 * s))
    for eps, acc in ((2 / 255, 60), (8 / 255, 20)):
        rows.append(row("sdnet-a", attack="pgd-linf", norm="Linf", eps=eps, steps=10, lam=0.1, correct=acc + 5,
                        flags="zero_gradients;bpda_selection"))
        rows.append(row("resnet-b", arch="resnet18", attack="pgd-linf", norm="Linf", eps=eps, steps=10, mode="n.a.",
                        correct=acc))
    rows.append(row("resnet-b", arch="resnet18", attack="square", source="sdnet-a", norm="Linf", eps=8 / 255,
                    steps=100, mode="n.a.", correct=70))
    return rows


def write_calibration(path: Path) -> None:
    from robustlab.adaptive import Calibration, Fit
    sweep = [{"level": lv, "lambda": lam, "accuracy": 0.9 - lv - abs(lam - 0.1 - lv), "residual_mean": 10 + 50 * lv
              + lam, "n": 50} for lv in (0.02, 0.1, 0.2) for lam in (0.1, 0.2, 0.3)]
    points = [{"level": lv, "lambda": 0.1 + lv, "residual": 10 + 50 * lv, "accuracy": 0.9 - lv} for lv in (0.02, 0.1,
                                                                                                         0.2)]
    Calibration(checkpoint_sha256="ab" * 32, arch="sdnet18", layer=0, noise="gaussian", grid=[0.1, 0.2, 0.3],
                levels=[0.02, 0.1, 0.2], sweep=sweep, points=points, fit=Fit(0.02, -0.1, 1.0),
                calibration_split="digits/train", n=50, seed=0).save(path)


def write_run(path: Path, rows: list[dict], *, calibration: bool = False, status: str = "finished") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path / "results.csv", index=False)
    (path / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "status": status,
                                                    "device": "cpu", "versions": {"robustlab": "0.1.0"}}))
    if calibration:
        write_calibration(path / "calibration.json")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run = write_run(tmp / "run", synthetic_rows(), calibration=True)
    return build_report([run], tmp / "out", baseline="resnet-b")


FIGURES = ["accuracy-vs-severity", "mean-corruption-accuracy", "robust-accuracy-vs-eps", "lambda-residual",
           "lambda-sweep-sdnet-a"]


def test_every_figure_written_as_png_and_svg(report):
    names = {p.name for p in report.figures}
    for stem in FIGURES:
        for ext in (".png", ".svg"):
            assert stem + ext in names
            p = report.markdown.parent / "figures" / (stem + ext)
            assert p.is_file()
            assert p.stat().st_size > 1000
    assert (report.markdown.parent / "figures" / "accuracy-vs-severity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_table_in_markdown_and_html(report):
    md = report.markdown.read_text()
    page = report.html.read_text()
    for tid, heading in TABLES.items():
        assert f"## {heading}" in md
        assert f'<table id="table-{tid}">' in page, tid  # every table has data in this run
    for stem in FIGURES:
        assert f"](figures/{stem}.png)" in md


def test_table_contents(report):
    md = report.markdown.read_text()
    t = report.tables
    clean = t["clean"].set_index("variant")["accuracy"]
    assert clean["resnet-b"] == pytest.approx(0.95)
    assert clean["sdnet-a [lambda 0.1]"] == pytest.approx(0.92)
    assert "| resnet-b | digits/test | 100 | 95.00 | 88.8–97.8 |" in md  # the Wilson interval of 95/100
    summary = t["corruption-summary"].set_index("variant")
    assert summary.loc["resnet-b", "mCE"] == pytest.approx(1.0)  # the baseline normalizes itself
    assert summary.loc["resnet-b", "mean_corruption_accuracy"] == pytest.approx(0.56)
    assert "mCE vs resnet-b (%)" in md
    assert list(t["per-corruption"]["corruption"]) == CORRUPTIONS
    assert set(t["robust"]["attack"]) == {"pgd-linf", "square"}
    assert "8/255" in md
    assert "sdnet-a" in md
    lam = t["lambda"]
    assert len(lam) == 1 + 2 * 3
    assert set(lam["fixed_lambda"]) == {0.1}
    first = lam[lam["corruption"] == "gaussian_noise"].iloc[0]
    assert first["adaptive-set_gain"] == pytest.approx(1.0)
    assert first["best_fixed_lambda"] == pytest.approx(0.1)
    assert "adaptive-image λ" in md
    assert "0.17 ± 0.04" in md
    assert len(t["warnings"]) == 2
    assert "zero_gradients" in md
    assert "`bpda_selection`:" in md


def test_html_is_self_contained(report):
    page = report.html.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<link" not in page
    assert "@import" not in page
    assert "url(" not in page
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(srcs) == len(FIGURES) == page.count("<img")
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    for href in re.findall(r"href=\"([^\"]*)\"", page):
        assert href.startswith("#")
    assert "<style>" in page


def test_one_colour_per_variant():
    colors = variant_colors(["b", "a", "c", "a"])
    assert list(colors) == ["b", "a", "c"]
    assert len(set(colors.values())) == 3
    assert variant_colors(["b", "a", "c"]) == colors  # the same mapping every time
    assert len(set(variant_colors([str(i) for i in range(25)]).values())) == 25


def test_figures_skipped_without_data(tmp_path):
    rows = [row("resnet-b", arch="resnet18", mode="n.a.", correct=95)]
    files = build_report([write_run(tmp_path / "clean-only", rows)], tmp_path / "out")
    assert files.figures == []
    assert not list((tmp_path / "out" / "figures").iterdir())
    md = files.markdown.read_text()
    assert "No attacked rows" in md
    assert "No figure" in md
    assert "<img" not in files.html.read_text()


def test_several_runs_and_errors(tmp_path):
    a = write_run(tmp_path / "a", synthetic_rows())
    b = write_run(tmp_path / "b", [row("resnet-b", arch="resnet18", mode="n.a.", correct=93)], status="running")
    files = build_report([a, b], tmp_path / "out")
    variants = set(files.tables["clean"]["variant"])
    assert {"resnet-b (a)", "resnet-b (b)"} <= variants  # the same model from two runs stays apart
    assert any("not finished" in w for w in files.warnings)
    assert "not finished" in files.markdown.read_text()
    with pytest.raises(RobustlabError, match="not a model variant"):
        build_report([a], tmp_path / "out2", baseline="nope")
    with pytest.raises(RobustlabError, match="results.csv"):
        build_report([tmp_path / "missing"], tmp_path / "out3")
    # a model name with one variant is accepted as the baseline
    build_report([a], tmp_path / "out4", baseline="sdnet-a [adaptive-set]")


def test_format_eps():
    assert format_eps(8 / 255, "Linf") == "8/255"
    assert format_eps(0.5, "L2") == "0.5"
    assert format_eps(math.nan) == "–"


CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = document.createElement('pre');
  out.id = 'robustlab-check';
  out.textContent = JSON.stringify({
    images: imgs.map(function (i) { return i.complete ? i.naturalWidth : -1; }),
    tables: Array.prototype.slice.call(document.querySelectorAll('table')).map(function (t) {
      return [t.id, t.rows.length]; })});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (/usr/bin/chromium or chromium on PATH)")
def test_html_renders_in_headless_chromium(report, tmp_path):
    page = report.html.read_text()
    wrapper = tmp_path / "check.html"  # the report plus a script that writes what loaded into the DOM
    wrapper.write_text(page.replace("</body>", CHECK + "</body>"))
    result = chromium_check(wrapper, tmp_path / "profile")
    assert len(result["images"]) == len(FIGURES)
    assert all(w > 0 for w in result["images"]), result["images"]
    tables = dict(result["tables"])
    for tid in TABLES:
        assert tables.get(f"table-{tid}", 0) >= 2, tid  # a header row and at least one data row
