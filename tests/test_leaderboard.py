"""`robustlab leaderboard`: one row per variant over several runs, headline figures equal to the report's, a
self-contained page that sorts by a click and filters, in headless Chromium where one is installed."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from robustlab.cli import main
from robustlab.reports.paired import worst_case
from robustlab.reports.runs import load_runs, outcome_loader
from tests.helpers import assert_error_line, chromium_check, chromium_path, snapshot

COMMON = ["--dataset", "fashion-mnist", "--n", "48", "--batch-size", "16", "--corruptions", "gaussian_noise",
          "--severities", "3", "--skip-diagnostics", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("board")
    first, second = root / "trained", root / "rdsn"
    assert main(["eval", "--ckpt", "zoo:resnet18-fashion,zoo:sdnet18-fashion", *COMMON, "--attack", "pgd-linf",
                 "--eps", "2/255", "--steps", "3", "--out", str(first)]) == 0
    assert main(["eval", "--ckpt", "zoo:rdsn-fashion", *COMMON, "--out", str(second)]) == 0
    return [first, second]


@pytest.fixture(scope="module")
def board(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("page") / "site" / "board.html"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["leaderboard", *map(str, runs), "--out", str(out), "--json"]) == 0
    return out, json.loads(buffer.getvalue())


def test_one_row_per_variant_with_the_report_s_figures(runs, board):
    _, rows = board
    df = load_runs(runs)[0]
    assert sorted(r["variant"] for r in rows) == sorted(df["variant"].unique())
    worst = worst_case(df, outcome_loader()).set_index("variant")
    for row in rows:
        clean = df[(df["variant"] == row["variant"]) & (df["corruption"] == "none") & (df["attack"] == "none")]
        assert row["clean_accuracy"] == pytest.approx(float(clean["accuracy"].iloc[0]))
        assert row["clean_n"] == 48
        assert len(row["checkpoint"]) == 12
        assert row["mean_corruption_accuracy"] is not None
        if row["variant"] in worst.index:
            assert row["robust Linf 2/255"] == pytest.approx(float(worst.loc[row["variant"], "accuracy"]))
            assert row["attacks"] == "pgd-linf"
        else:  # the RDSN run has no attack
            assert row["robust Linf 2/255"] is None
            assert row["attacks"] == ""


def test_the_page_is_self_contained_and_links_each_run(runs, board):
    page, rows = board
    text = page.read_text()
    assert "http://" not in text
    assert "https://" not in text
    assert "<script src" not in text
    for row in rows:
        assert (page.parent / row["link"]).resolve() == (Path(runs[0] if "rdsn" not in row["variant"] else runs[1])
                                                         / "results.csv").resolve()
        assert f'href="{row["link"]}"' in text


def test_flags_show_as_badges(runs, tmp_path):
    df = pd.read_csv(runs[0] / "results.csv", dtype=str, keep_default_na=False)
    df.loc[df["attack"] == "pgd-linf", "flags"] = "zero_gradients"
    flagged = tmp_path / "flagged"
    flagged.mkdir()
    df.to_csv(flagged / "results.csv", index=False)
    for sub in ("outcomes",):
        (flagged / sub).symlink_to(runs[0] / sub)
    out = tmp_path / "board.html"
    assert main(["leaderboard", str(flagged), "--out", str(out)]) == 0
    assert out.read_text().count('<span class="badge"') == 2  # one per variant attacked


def test_a_wrong_out_is_refused_and_nothing_changes(runs, tmp_path, capsys):
    (tmp_path / "page.txt").write_text("keep")
    (tmp_path / "link.html").symlink_to(tmp_path / "page.txt")
    before = snapshot(tmp_path)
    for out, names in (("page.txt", ("is not an .html file",)), ("link.html", ("link.html", "symbolic link"))):
        assert main(["leaderboard", str(runs[0]), "--out", str(tmp_path / out)]) != 0
        assert_error_line(capsys.readouterr().err, *names)
    assert snapshot(tmp_path) == before


CHECK = """<script>
window.addEventListener('load', function () {
  function order() { return Array.prototype.map.call(document.getElementById('leaderboard').tBodies[0].rows,
    function (r) { return r.cells[0].textContent; }); }
  var header = Array.prototype.filter.call(document.querySelectorAll('#leaderboard th'),
    function (th) { return th.textContent === 'mean corruption'; })[0];
  var result = {before: order()};
  header.click(); result.first = order();
  header.click(); result.second = order();
  var box = document.getElementById('filter');
  box.value = 'rdsn'; box.dispatchEvent(new Event('input'));
  result.shown = Array.prototype.filter.call(document.getElementById('leaderboard').tBodies[0].rows,
    function (r) { return r.style.display !== 'none'; }).length;
  var out = document.createElement('pre');
  out.id = 'robustlab-check';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (/usr/bin/chromium or chromium on PATH)")
def test_clicking_a_header_sorts_the_rows_in_headless_chromium(board, tmp_path):
    page, rows = board
    wrapper = page.parent / "check.html"  # the page plus a script that clicks and writes the order into the DOM
    wrapper.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    result = chromium_check(wrapper, tmp_path / "profile")
    figure = {r["variant"]: r["mean_corruption_accuracy"] for r in rows}
    descending = sorted(figure, key=lambda v: -figure[v])
    assert len(set(figure.values())) == len(figure), "distinct figures, so the order is defined"
    assert result["first"] == descending
    assert result["second"] == descending[::-1]
    assert result["before"] != result["first"] or result["before"] != result["second"]
    assert result["shown"] == 1
