"""`robustlab report`: tables and figures from one or more run directories, as report.md and one
self-contained report.html.

Every model variant (`robustlab.reports.metrics.variants`: the model plus its lambda setting) keeps one colour
in every figure (`variant_colors`). A figure whose data is absent is not drawn; a table whose data is absent
keeps its heading with a one-line note, so the report always has the same sections.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robustlab.errors import RobustlabError
from robustlab.files import check_output, check_output_folder, write_atomic
from robustlab.reports.figures import (
    lambda_residual_figure,
    lambda_sweep_figure,
    mean_corruption_figure,
    robust_figure,
    severity_figure,
)
from robustlab.reports.pictures import adversarial_examples, corruption_gallery, failures_side_by_side
from robustlab.reports.render import Page, ReportFigure, Section, html_page, markdown
from robustlab.reports.runs import Run, load_runs, outcome_loader
from robustlab.reports.style import format_eps, variant_colors
from robustlab.reports.tables import REPORT_TABLES, ReportData
from robustlab.schema import flag_meaning

TABLES = {t.id: t.heading for t in REPORT_TABLES}  # id -> heading, in report order
__all__ = ["TABLES", "ReportFiles", "build_report", "format_eps", "variant_colors"]


@dataclass
class ReportFiles:
    """What build_report wrote: the two reports, every figure file (PNG and SVG), and the tables (numeric
    frames, by the ids of TABLES; a table without data is an empty frame)."""
    markdown: Path
    html: Path
    figures: list[Path]
    tables: dict[str, pd.DataFrame]
    warnings: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def resolve_baseline_variant(baseline: str | None, df: pd.DataFrame, order: list[str]) -> str | None:
    """`--baseline` as a variant label: a variant, or a model with exactly one variant."""
    if baseline is None or baseline in order:
        return baseline
    matches = list(dict.fromkeys(df.loc[df["model"] == baseline, "variant"]))
    if len(matches) != 1:
        raise RobustlabError(f"baseline {baseline!r} is not a model variant of these runs; variants: "
                             f"{', '.join(order)}")
    return matches[0]


def dataset_figures(df: pd.DataFrame, summary: pd.DataFrame, worst: pd.DataFrame, colors: dict,
                    fig_dir: Path) -> list[ReportFigure]:
    """Per dataset: accuracy versus severity, mean corruption accuracy, robust accuracy versus eps."""
    figures = []
    datasets = list(dict.fromkeys(df["dataset"]))
    for ds in datasets:
        sub = df[df["dataset"] == ds]
        sfx = "" if len(datasets) == 1 else f"-{_slug(ds)}"
        on = "" if len(datasets) == 1 else f" ({ds})"
        figures.append(ReportFigure(
            f"severity{sfx}", f"Accuracy versus severity{on}",
            "A panel per corruption, a line per model variant; severity 0 is the clean accuracy; bars are 95% "
            "Wilson intervals.",
            severity_figure(sub, colors, fig_dir / f"accuracy-vs-severity{sfx}",
                            title=f"Accuracy versus corruption severity{on}")))
        figures.append(ReportFigure(
            f"mean-corruption{sfx}", f"Mean corruption accuracy{on}",
            "Bars: mean accuracy over the benchmark corruption cells with the 95% interval of the table above "
            "(bootstrap over images, or pooled where a run kept no outcomes); diamonds: clean accuracy.",
            mean_corruption_figure(summary[summary["dataset"] == ds] if len(summary) else summary, colors,
                                   fig_dir / f"mean-corruption-accuracy{sfx}",
                                   title=f"Mean corruption accuracy per variant{on}")))
        figures.append(ReportFigure(
            f"robust{sfx}", f"Robust accuracy versus eps{on}",
            "A panel per attack, a line per variant (dashed: transferred from the named model), and a 'worst case' "
            "panel per norm: the images that survive every attack; eps 0 is the clean accuracy; bars are 95% "
            "Wilson intervals.",
            robust_figure(sub, colors, fig_dir / f"robust-accuracy-vs-eps{sfx}",
                          title=f"Robust accuracy versus eps{on}",
                          worst=worst[worst["dataset"] == ds] if len(worst) else None)))
    return figures


def lambda_figures(df: pd.DataFrame, runs: list[Run], fig_dir: Path) -> list[ReportFigure]:
    """Each run's calibration fit, and each model's lambda sweep."""
    figures = []
    for run in runs:
        if run.calibration is not None:
            sfx = "" if len(runs) == 1 else f"-{_slug(run.name)}"
            c = run.calibration
            figures.append(ReportFigure(
                f"lambda-residual{sfx}", f"Algorithm 1 calibration ({run.name})",
                f"Lambda-residual fit of {c.arch} on {c.noise} noise ({c.calibration_split}, {c.n} images): "
                f"lambda = {c.fit.a:.3g} r + {c.fit.b:.3g}.",
                lambda_residual_figure(c, fig_dir / f"lambda-residual{sfx}")))
    for model in dict.fromkeys(df["model"]):
        figures.append(ReportFigure(
            f"lambda-sweep-{_slug(model)}", f"Lambda sweep: {model}",
            "Accuracy per fixed lambda (rows) and corruption/severity cell (columns); adaptive lambda rows below the "
            "white line.",
            lambda_sweep_figure(df, model, fig_dir / f"lambda-sweep-{_slug(model)}")))
    return figures


def picture_figures(df: pd.DataFrame, runs: list[Run], fig_dir: Path, data: ReportData,
                    warnings: list[str]) -> list[ReportFigure]:
    """The SDNet's and RDSN's failures side by side, each run's corruption gallery and its saved adversarial
    examples (robustlab.reports.pictures)."""
    figures = failures_side_by_side(df, runs, fig_dir, data.outcomes, warnings.append)
    for run in runs:
        stem = _slug(run.name)
        gallery = corruption_gallery(run, df, fig_dir, stem, warnings.append)
        figures += ([gallery] if gallery is not None else []) + \
            adversarial_examples(run, df, fig_dir, stem, data.outcomes, warnings.append)
    return figures


def build_report(run_dirs: list[Path], out: Path, *, baseline: str | None = None) -> ReportFiles:
    """Read the run directories (results.csv, manifest.json, calibration.json when present) and write into `out`
    report.md, report.html (self-contained) and figures/*.png|svg. `baseline` names the variant (a label of
    `robustlab.reports.metrics.variants`, or a model name with a single variant) that mCE is normalized by."""
    out = Path(out)
    fig_dir = out / "figures"
    md_path, html_path = out / "report.md", out / "report.html"
    for path in (md_path, html_path):  # every output, before anything is written
        check_output(path, root=out, what="--out")
    check_output_folder(fig_dir, root=out, what="--out", suffixes=(".png", ".svg"))
    df, runs, warnings = load_runs(run_dirs)
    order = list(dict.fromkeys(df["variant"]))
    baseline = resolve_baseline_variant(baseline, df, order)
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobustlabError(f"cannot create report directory {out} ({e.strerror}); pass a writable --out") from None
    data = ReportData(df, runs, order, baseline, outcome_loader())
    tables = {t.id: t.build(data) for t in REPORT_TABLES}
    colors = variant_colors(order)
    figures = dataset_figures(df, tables["corruption-summary"], tables["worst-case"], colors, fig_dir) \
        + lambda_figures(df, runs, fig_dir) + picture_figures(df, runs, fig_dir, data, warnings)
    figures = [f for f in figures if f.paths]
    flag_names = sorted({f for s in df["flags"] for f in s.split(";") if f.strip()})
    legend = {"warnings": [(f, flag_meaning(f)) for f in flag_names]}
    sections = [Section(t.id, t.heading, t.note, t.display(tables[t.id], baseline), t.empty, legend.get(t.id, []))
                for t in REPORT_TABLES]
    intro = (f"Runs: {', '.join(r.name for r in runs)}. Variants: {', '.join(order)}."
             + (f" mCE baseline: {baseline}." if baseline else ""))
    page = Page("robustlab report", intro, warnings, sections, figures)
    write_atomic(md_path, markdown(page).encode())
    write_atomic(html_path, html_page(page).encode())
    return ReportFiles(md_path, html_path, [p for f in figures for p in f.paths], tables, warnings)
