"""A local leaderboard: one row per model variant and dataset over any runs, with the headline figures and their
intervals, as one self-contained HTML page (no CDN) whose columns sort by a click and whose rows a box filters."""
from __future__ import annotations

import html
import math
import os
import warnings
from pathlib import Path
from typing import Sequence, cast

import pandas as pd

from robustlab.reports.paired import Loader, worst_case
from robustlab.reports.runs import Run, load_runs, outcome_loader
from robustlab.reports.style import format_eps
from robustlab.reports.tables import clean_table, summary_table
from robustlab.schema import FLAGS


def headline_table(df: pd.DataFrame, load: Loader, *, baseline: str | None = None,
                   worst: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per variant and dataset: clean accuracy, mean corruption accuracy (benchmark corruptions), mCE and
    relative mCE against `baseline`, and robust accuracy under every attack per threat model (`robust <norm>
    <eps>`), each with its 95% interval (`... low`, `... high`). `worst`: paired.worst_case of df, if the caller
    has it."""
    order = list(dict.fromkeys(df["variant"]))
    clean = clean_table(df, order)[["variant", "dataset", "n", "accuracy", "ci_low", "ci_high"]]
    out = clean.rename(columns={"n": "clean_n", "accuracy": "clean_accuracy", "ci_low": "clean_low",
                                "ci_high": "clean_high"})
    summary = summary_table(df, order, baseline, load)
    if not summary.empty:
        corruption = summary[["variant", "dataset", "mean_corruption_accuracy", "ci_low", "ci_high", "mCE",
                              "relative_mCE"]].rename(columns={"ci_low": "mean_corruption_low",
                                                               "ci_high": "mean_corruption_high"})
        out = out.merge(corruption, on=["variant", "dataset"], how="outer")
    worst = worst_case_quietly(df, load) if worst is None else worst
    for (norm, eps), rows in worst.groupby(["norm", "eps"], sort=True):
        column = f"robust {norm} {format_eps(cast(float, eps), str(norm))}"  # keys typed Hashable
        part = rows[["variant", "dataset", "accuracy", "ci_low", "ci_high"]].rename(
            columns={"accuracy": column, "ci_low": f"{column} low", "ci_high": f"{column} high"})
        out = out.merge(part, on=["variant", "dataset"], how="outer")
    return out.reset_index(drop=True)


def worst_case_quietly(df: pd.DataFrame, load: Loader) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pandas' concat of all-NaN columns
        return worst_case(df, load)


def leaderboard_frame(df: pd.DataFrame, runs: Sequence[Run], out_dir: Path, *, baseline: str | None = None
                      ) -> pd.DataFrame:
    """The headline table plus what a board shows beside it: attacks covered, flags, date, checkpoint digest and
    a link (relative to `out_dir`) to each variant's run report, or its results.csv where it has none."""
    load = outcome_loader()
    worst = worst_case_quietly(df, load)
    board = headline_table(df, load, baseline=baseline, worst=worst)
    by_path = {str(r.path): r for r in runs}
    extra = []
    for variant, dataset in zip(board["variant"], board["dataset"]):
        rows = df[(df["variant"] == variant) & (df["dataset"] == dataset)]
        covered = worst[(worst["variant"] == variant) & (worst["dataset"] == dataset)]
        flags = sorted({f for text in rows["flags"].fillna("") for f in str(text).split(";") if f in FLAGS})
        run = by_path.get(str(rows["run_dir"].iloc[0]))
        manifest = run.manifest if run is not None and run.manifest else {}
        root = Path(rows["run_dir"].iloc[0])
        target = root / "report.html" if (root / "report.html").is_file() else root / "results.csv"
        extra.append({"attacks": covered["attacks"].iloc[-1] if len(covered) else "",
                      "flags": ";".join(flags), "date": str(manifest.get("ended") or manifest.get("started") or ""),
                      "checkpoint": str(rows["checkpoint_sha256"].iloc[0])[:12],
                      "link": Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()})
    return pd.concat([board, pd.DataFrame(extra, index=board.index)], axis=1)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}th:hover{background:#e6e6e6}
td.text,th.text{text-align:left}.ci{color:#777;font-size:12px}
.badge{display:inline-block;background:#c0392b;color:#fff;border-radius:3px;padding:0 4px;margin:1px;font-size:11px}
input{margin:0 0 1em 0;padding:4px;width:24em}"""

_SCRIPT = """(function () {
  var table = document.getElementById('leaderboard');
  var body = table.tBodies[0];
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener('click', function () {
      var down = th.getAttribute('data-order') !== 'desc';
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('data-order'); });
      th.setAttribute('data-order', down ? 'desc' : 'asc');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-value'), y = b.cells[col].getAttribute('data-value');
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
        if (isNaN(nx) !== isNaN(ny)) { c = isNaN(nx) ? 1 : -1; return c; }  // missing figures last
        return down ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.getElementById('filter').addEventListener('input', function (e) {
    var q = e.target.value.toLowerCase();
    Array.prototype.forEach.call(body.rows, function (r) {
      r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
    });
  });
})();"""


def _figure_cell(row: pd.Series, column: str) -> str:
    value = row[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-value="">–</td>'
    low, high = row.get(f"{column} low", math.nan), row.get(f"{column} high", math.nan)
    interval = f' <span class="ci">{100 * low:.1f}–{100 * high:.1f}</span>' if pd.notna(low) and pd.notna(high) \
        else ""
    shown = f"{value:.3f}" if column in ("mCE", "relative_mCE") else f"{100 * value:.2f}"
    return f'<td data-value="{value:.6g}">{shown}{interval}</td>'


def leaderboard_html(board: pd.DataFrame, *, title: str = "robustlab leaderboard") -> str:
    """The page: figures in percent with their 95% intervals, flags as badges, a link per row to its run."""
    renames = {"clean_accuracy": "clean", "mean_corruption_accuracy": "mean corruption"}
    figures = ["clean_accuracy", *[c for c in ("mean_corruption_accuracy", "mCE", "relative_mCE") if c in board],
               *[c for c in map(str, board) if c.startswith("robust ") and not c.endswith((" low", " high"))]]
    bounds = {"clean_accuracy": "clean", "mean_corruption_accuracy": "mean_corruption"}
    head = "".join(f'<th class="text">{h}</th>' for h in ("variant", "dataset")) + \
        "".join(f"<th>{html.escape(renames.get(c, c))}</th>" for c in figures) + \
        '<th>images</th><th class="text">attacks</th><th class="text">flags</th><th class="text">date</th>' \
        '<th class="text">checkpoint</th><th class="text">run</th>'
    lines = []
    for _, row in board.iterrows():
        row = row.copy()
        for column, prefix in bounds.items():
            if column in board:
                row[f"{column} low"], row[f"{column} high"] = row.get(f"{prefix}_low"), row.get(f"{prefix}_high")
        badges = "".join(f'<span class="badge" title="{html.escape(FLAGS[f])}">{html.escape(f)}</span>'
                         for f in str(row["flags"]).split(";") if f)
        cells = [f'<td class="text" data-value="{html.escape(str(row[c]))}">{html.escape(str(row[c]))}</td>'
                 for c in ("variant", "dataset")]
        cells += [_figure_cell(row, c) for c in figures]
        images = int(row["clean_n"]) if pd.notna(row["clean_n"]) else ""
        cells += [f'<td data-value="{images}">{images}</td>',
                  f'<td class="text" data-value="{html.escape(row["attacks"])}">{html.escape(row["attacks"])}</td>',
                  f'<td class="text" data-value="{html.escape(str(row["flags"]))}">{badges}</td>',
                  f'<td class="text" data-value="{html.escape(row["date"])}">{html.escape(row["date"][:16])}</td>',
                  f'<td class="text" data-value="{row["checkpoint"]}"><code>{row["checkpoint"]}</code></td>',
                  f'<td class="text" data-value="{html.escape(row["link"])}"><a href="{html.escape(row["link"])}">'
                  f'{html.escape(Path(row["link"]).name)}</a></td>']
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            '<p>Accuracy in percent with 95% intervals (Wilson for clean and worst case, bootstrap over images for '
            'mean corruption accuracy where the runs kept outcomes); "robust" is the worst case over every attack '
            'run at that eps or a smaller one. Click a column to sort, type to filter.</p>'
            '<input id="filter" type="search" placeholder="filter rows (variant, dataset, flag, ...)">'
            f'<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'
            f"<script>{_SCRIPT}</script></body></html>\n")


def build_leaderboard(run_dirs: Sequence[str | Path], out: Path, *, baseline: str | None = None) -> pd.DataFrame:
    """Read the runs, write the page to `out` (checked first, written atomically) and return the board."""
    from robustlab.files import check_output, check_path_length, write_atomic
    check_path_length(out, "--out")
    check_output(out, root=out.parent, what="--out")
    df, runs, _ = load_runs(list(run_dirs))
    board = leaderboard_frame(df, runs, out.parent, baseline=baseline)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, leaderboard_html(board).encode())
    return board
