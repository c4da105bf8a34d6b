"""Rendering a report's sections as Markdown and as one self-contained HTML page (figures embedded as PNG data
URIs, CSS inline, no external links), both from the same section list."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class ReportFigure:
    """A drawn figure: its id, title, caption and files (PNG and SVG)."""
    fid: str
    title: str
    caption: str
    paths: list[Path]

    @property
    def png(self) -> Path:
        return next(p for p in self.paths if p.suffix == ".png")


@dataclass
class Section:
    """A table section: anchor id, heading, note, the displayed table (empty: `empty` is shown), and a legend of
    (term, meaning) lines below it."""
    sid: str
    heading: str
    note: str
    table: pd.DataFrame
    empty: str
    legend: list[tuple[str, str]]


@dataclass
class Page:
    title: str
    intro: str
    notes: list[str]
    sections: list[Section]
    figures: list[ReportFigure]


NO_FIGURE = "No figure: the runs hold no corruption, attack, sweep or calibration data."


def _md(text: Any) -> str:
    """Text from the runs (model names, paths, ...) as Markdown text: Markdown viewers render raw HTML, so `<`, `>`
    and `&` are escaped as in HTML."""
    return html.escape(str(text), quote=False)


def _md_cell(v: Any) -> str:
    return _md(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(d: pd.DataFrame) -> str:
    head = [_md_cell(c) for c in d.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in d.astype(str).itertuples(index=False)]
    return "\n".join(lines)


def html_table(d: pd.DataFrame, tid: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                     for row in d.astype(str).itertuples(index=False))
    return f'<table id="table-{tid}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
.note { color: #555; font-size: 13px; }
.empty { color: #888; font-style: italic; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.scroll { overflow-x: auto; }
ul.warn li { color: #8a4b00; }
"""


def markdown(page: Page) -> str:
    md = [f"# {_md(page.title)}", "", _md(page.intro), ""]
    if page.notes:
        md += ["**Notes:**", *[f"- {_md(w)}" for w in page.notes], ""]
    for s in page.sections:
        md += [f"## {_md(s.heading)}", ""]
        if s.note:
            md += [_md(s.note), ""]
        md += [markdown_table(s.table) if not s.table.empty else f"*{_md(s.empty)}*", ""]
        if s.legend:
            md += [f"- `{term}`: {_md(meaning)}" for term, meaning in s.legend] + [""]
    md += ["## Figures", ""]
    for f in page.figures:
        title = _md(f.title)
        md += [f"### {title}", "", f"![{title}](figures/{f.png.name})", "", _md(f.caption),
               f"([SVG](figures/{f.png.with_suffix('.svg').name}))", ""]
    if not page.figures:
        md += [f"*{NO_FIGURE}*", ""]
    return "\n".join(md)


def html_page(page: Page) -> str:
    esc = html.escape
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{esc(page.title)}</title>", f"<style>{CSS}</style></head><body>", f"<h1>{esc(page.title)}</h1>",
         f"<p>{_html_intro(page.intro)}</p>"]
    if page.notes:
        h += ['<ul class="warn">', *[f"<li>{esc(w)}</li>" for w in page.notes], "</ul>"]
    h += ["<nav><b>Contents:</b> " + " · ".join(f'<a href="#{s.sid}">{esc(s.heading)}</a>' for s in page.sections)
          + ' · <a href="#figures">Figures</a></nav>']
    for s in page.sections:
        h.append(f'<h2 id="{s.sid}">{esc(s.heading)}</h2>')
        if s.note:
            h.append(f'<p class="note">{esc(s.note)}</p>')
        h.append(f'<div class="scroll">{html_table(s.table, s.sid)}</div>' if not s.table.empty
                 else f'<p class="empty" id="table-{s.sid}">{esc(s.empty)}</p>')
        if s.legend:
            h += ["<ul>", *[f"<li><code>{esc(term)}</code>: {esc(meaning)}</li>" for term, meaning in s.legend],
                  "</ul>"]
    h.append('<h2 id="figures">Figures</h2>')
    for f in page.figures:
        data = base64.b64encode(f.png.read_bytes()).decode("ascii")
        h.append(f'<figure id="figure-{esc(f.fid)}"><h3>{esc(f.title)}</h3>'
                 f'<img alt="{esc(f.title)}" src="data:image/png;base64,{data}">'
                 f"<figcaption>{esc(f.caption)}</figcaption></figure>")
    if not page.figures:
        h.append(f'<p class="empty">{NO_FIGURE}</p>')
    h.append("</body></html>")
    return "\n".join(h)


def _html_intro(intro: str) -> str:
    """The intro line, escaped, with the mCE baseline's name in bold."""
    head, sep, baseline = intro.partition(" mCE baseline: ")
    if not sep:
        return html.escape(intro)
    return f"{html.escape(head)} mCE baseline: <b>{html.escape(baseline.rstrip('.'))}</b>."
