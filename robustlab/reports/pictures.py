"""Pictures in the report: the first test images under every corruption of a run at every severity, as the model
saw them (regenerated from the run's seed, or read from its --c-dir), and adversarial examples from `--save-adv`
files (clean, adversarial, the perturbation scaled to be visible, and the classes predicted before and after)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from robustlab.errors import RobustlabError
from robustlab.outcomes import Outcomes
from robustlab.reports.figures import save
from robustlab.reports.render import ReportFigure
from robustlab.reports.runs import Run
from robustlab.reports.style import corruption_order, format_eps

GALLERY_IMAGES = 3  # test images per corruption and severity
ADVERSARIAL_IMAGES = 4  # adversarial examples per attack and eps
Warn = Callable[[str], None]


def _manifest(run: Run) -> dict[str, Any]:
    """The run's manifest, which says how to read its images again."""
    if run.manifest is None:
        raise RobustlabError(f"run {run.name} has no readable manifest.json")
    return run.manifest


def _images(run: Run, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run's clean test images at `indices` (uint8 NHWC) and their labels."""
    from robustlab.data import load_dataset
    args = _manifest(run)["arguments"]
    data = load_dataset(args["dataset"], args.get("data_dir"))
    order = np.asarray(indices, dtype=np.int64)
    images, labels = next(iter(data.batches(len(order), len(order), order=order)))
    return images.permute(0, 2, 3, 1).numpy(), labels.numpy()


def _corrupted(run: Run, clean: np.ndarray, indices: Sequence[int] | np.ndarray, corruption: str,
               severity: int) -> np.ndarray:
    """The images at `indices` of a corruption cell as the run evaluated them (`clean`: the same images clean)."""
    manifest = _manifest(run)
    args = manifest["arguments"]
    suite = manifest.get("corruption_suite") or {}
    if args.get("c_dir"):
        from robustlab.data.corrupted import load_cifar_c, load_imagenet_c
        data = load_imagenet_c(args["c_dir"], corruption, severity) if args["dataset"] == "imagenet" else \
            load_cifar_c(args["c_dir"], corruption, severity, name=args["dataset"], num_classes=0)
        order = np.asarray(indices, dtype=np.int64)
        images, _ = next(iter(data.batches(len(order), len(order), order=order)))
        return images.permute(0, 2, 3, 1).numpy()
    from robustlab.corruptions.engine import corrupt
    from robustlab.corruptions.parameters import OLD_PARAMETERS_KEY, default_parameters
    parameters = suite.get("parameters") or suite.get(OLD_PARAMETERS_KEY) or default_parameters(args["dataset"])
    seed = int(args.get("seed", 0))
    param = (suite.get("levels") or {}).get(f"{corruption}-{severity}")
    reencode = suite.get("jpeg_reencode_quality") is not None
    # each image's noise is seeded by its index: one call per image keeps it, whichever images are shown
    return np.concatenate([corrupt(clean[k:k + 1], corruption, severity, start=int(i), parameters=parameters,
                                   seed=seed, param=param, reencode=reencode) for k, i in enumerate(indices)])


def _strip(images: np.ndarray) -> np.ndarray:
    """Images side by side with a white gap, as float RGB in [0, 1]."""
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    gap = np.ones((rgb.shape[1], max(1, rgb.shape[2] // 8), 3))
    parts = []
    for im in rgb:
        parts += [im / 255.0, gap]
    return np.concatenate(parts[:-1], axis=1)


def corruption_gallery(run: Run, df: pd.DataFrame, fig_dir: Path, stem: str, warn: Warn) -> ReportFigure | None:
    """A row per corruption, a column per severity (and clean): the run's first test images in each cell."""
    import matplotlib.pyplot as plt
    rows = df[(df["run_dir"] == str(run.path)) & (df["corruption"] != "none")]
    if rows.empty or not run.manifest or "arguments" not in run.manifest:
        return None
    cells = sorted({(c, int(s)) for c, s in zip(rows["corruption"], rows["severity"])})
    names = corruption_order(list(dict.fromkeys(c for c, _ in cells)))
    severities = sorted({s for _, s in cells})
    try:
        shown = range(GALLERY_IMAGES)
        clean, _ = _images(run, shown)
        grid = {(c, s): _strip(_corrupted(run, clean, shown, c, s)) for c, s in cells}
    except (RobustlabError, OSError, KeyError) as e:
        warn(f"corruption gallery of run {run.name} skipped: {str(e).splitlines()[0]}")
        return None
    fig, axes = plt.subplots(len(names), len(severities) + 1, squeeze=False,
                             figsize=(1.6 * (len(severities) + 1) * GALLERY_IMAGES / 2, 1.0 * len(names) + 0.5))
    for i, name in enumerate(names):
        for j, severity in enumerate([0, *severities]):
            ax = axes[i][j]
            ax.axis("off")
            picture = _strip(clean) if severity == 0 else grid.get((name, severity))
            if picture is not None:
                ax.imshow(picture, interpolation="nearest")
            if i == 0:
                ax.set_title("clean" if severity == 0 else f"severity {severity}", fontsize=8)
        axes[i][0].text(-0.05, 0.5, name, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.1)
    source = "read from --c-dir" if run.manifest["arguments"].get("c_dir") else "regenerated from the run's seed"
    return ReportFigure(f"gallery-{stem}", f"Corruptions as the model saw them ({run.name})",
                        f"The first {GALLERY_IMAGES} test images under every corruption of the run at every severity "
                        f"({source}).", save(fig, fig_dir / f"corruption-gallery-{stem}"))


def _adversarial_row(df: pd.DataFrame, run: Run, path: Path) -> pd.Series | None:
    """The attack row a --save-adv file belongs to (its name: model-mode-attack-norm-epsE[-from-source].npz)."""
    rows = df[(df["run_dir"] == str(run.path)) & (df["attack"] != "none")]
    for _, row in rows.iterrows():
        source = f"-from-{row['attack_source']}" if row["attack_source"] else ""
        model = row["cell"][0]  # the model's name as the run wrote it (a report renames models shared by runs)
        name = f"{model}-{row['lambda_mode']}-{row['attack']}-{row['norm']}-eps{row['eps']:.6f}{source}.npz"
        if name == path.name:
            return row
    return None


def adversarial_examples(run: Run, df: pd.DataFrame, fig_dir: Path, stem: str, load: Callable[[pd.Series],
                         Outcomes | None], warn: Warn) -> list[ReportFigure]:
    """Per --save-adv file: clean image, adversarial image, perturbation (scaled to [0, 1] from -eps..eps) and the
    classes predicted before and after, for the first images."""
    import matplotlib.pyplot as plt
    folder = run.path / "adversarial"
    files = sorted(folder.glob("*.npz")) if folder.is_dir() and not folder.is_symlink() else []
    figures: list[ReportFigure] = []
    if not files:
        return figures
    try:  # every file holds the run's images in order: the first few, read once for all of them
        first, _ = _images(run, range(ADVERSARIAL_IMAGES))
    except (RobustlabError, OSError, ValueError, KeyError) as e:
        warn(f"adversarial examples of run {run.name} skipped: {str(e).splitlines()[0]}")
        return figures
    for path in files:
        row = _adversarial_row(df, run, path)
        if row is None:
            continue
        clean_rows = df[(df["run_dir"] == str(run.path)) & (df["model"] == row["model"]) & (df["corruption"] == "none")
                        & (df["attack"] == "none") & (df["lambda_mode"] == row["lambda_mode"])]
        try:
            with np.load(path, allow_pickle=False) as npz:
                adversarial, labels = npz["adversarial"][:ADVERSARIAL_IMAGES], npz["labels"][:ADVERSARIAL_IMAGES]
        except (OSError, ValueError, KeyError) as e:
            warn(f"adversarial examples of {path.name} skipped: {str(e).splitlines()[0]}")
            continue
        after = load(row)
        before = load(clean_rows.iloc[0]) if len(clean_rows) else None
        clean = first[:len(labels)].astype(np.float32) / 255
        adversarial = adversarial.transpose(0, 2, 3, 1)
        eps = float(row["eps"])
        shown = np.clip((adversarial - clean) / (2 * eps) + 0.5, 0, 1) if row["norm"] == "Linf" else \
            np.clip((adversarial - clean) / (2 * np.abs(adversarial - clean).max() + 1e-12) + 0.5, 0, 1)
        fig, axes = plt.subplots(len(labels), 3, squeeze=False, figsize=(4.5, 1.5 * len(labels)))
        for i in range(len(labels)):
            was = before.pred[i] if before is not None and i < before.n else None
            now = after.pred[i] if after is not None and i < after.n else None
            for j, (picture, title) in enumerate(((clean[i], f"clean: {_label(was)} (true {labels[i]})"),
                                                  (adversarial[i], f"adversarial: {_label(now)}"),
                                                  (shown[i], "perturbation x 1/(2 eps)"))):
                ax = axes[i][j]
                ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
                ax.set_title(title, fontsize=7)
                ax.axis("off")
        what = f"{row['attack']} {row['norm']} eps {format_eps(eps, row['norm'])} on {row['model']}"
        figures.append(ReportFigure(
            f"adversarial-{stem}-{len(figures)}", f"Adversarial examples: {what}",
            "Clean image (class predicted, true class), adversarial image (class predicted; -1: no prediction, a "
            "skipped image in the worst-case mode) and the perturbation, mid-grey = 0.",
            save(fig, fig_dir / f"adversarial-{stem}-{path.stem.replace('.', '_')}")))  # no dot: save() sets the suffix
    return figures


def _label(pred: int | None) -> str:
    return "?" if pred is None else str(int(pred))


FAILURES_SHOWN = 4  # images per direction in the side-by-side failures


def _family(arch: str) -> str | None:
    return "RDSN" if "rdsn" in arch else "SDNet" if arch.startswith("sdnet") else None


def failures_side_by_side(df: pd.DataFrame, runs: Sequence[Run], fig_dir: Path,
                          load: Callable[[pd.Series], Outcomes | None], warn: Warn) -> list[ReportFigure]:
    """Where the runs hold an SDNet and an RDSN evaluated on the same images: in the unattacked cell where they
    disagree most, the images one gets wrong and the other right, both ways, with each one's predicted class."""
    import matplotlib.pyplot as plt
    unattacked = df[df["attack"] == "none"]
    families = {v: _family(str(a)) for v, a in zip(unattacked["variant"], unattacked["arch"])}
    sdnets = [v for v, f in families.items() if f == "SDNet"]
    rdsns = [v for v, f in families.items() if f == "RDSN"]
    if not sdnets or not rdsns:
        return []
    a, b = sdnets[0], rdsns[0]
    best = None
    for key, both in unattacked[unattacked["variant"].isin([a, b])].groupby(["dataset", "corruption", "severity"]):
        if set(both["variant"]) != {a, b} or len(both) != 2:
            continue
        ra, rb = (both[both["variant"] == v].iloc[0] for v in (a, b))
        oa, ob = load(ra), load(rb)
        if oa is None or ob is None or ra["image_set"] != rb["image_set"]:
            continue
        disagree = int((oa.ok != ob.ok).sum())
        if best is None or disagree > best[0]:
            best = (disagree, key, ra, oa, ob)
    if best is None or best[0] == 0:
        return []
    _, (dataset, corruption, severity), ra, oa, ob = best
    run = next((r for r in runs if str(r.path) == ra["run_dir"]), None)
    assert run is not None  # df and runs come from one load_runs: every row's run_dir is a run's
    pairs = [(np.flatnonzero(~oa.ok & ob.ok)[:FAILURES_SHOWN], f"{a} wrong, {b} right"),
             (np.flatnonzero(oa.ok & ~ob.ok)[:FAILURES_SHOWN], f"{b} wrong, {a} right")]
    try:
        shown = []
        for positions, title in pairs:
            indices = oa.index[positions]
            clean, labels = _images(run, indices) if len(indices) else (np.zeros((0,)), np.zeros(0))
            images = clean if corruption == "none" or not len(indices) else \
                _corrupted(run, clean, indices, corruption, int(severity))
            shown.append((positions, images, labels, title))
    except (RobustlabError, OSError, KeyError, TypeError, StopIteration) as e:
        warn(f"side-by-side failures skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return []
    fig, axes = plt.subplots(2, FAILURES_SHOWN, squeeze=False, figsize=(1.8 * FAILURES_SHOWN, 4.4))
    for r, (positions, images, labels, title) in enumerate(shown):
        axes[r][0].set_ylabel(title, fontsize=7)
        for c in range(FAILURES_SHOWN):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(positions):
                ax.imshow(images[c].squeeze(-1) if images[c].shape[-1] == 1 else images[c], cmap="gray",
                          interpolation="nearest")
                ax.set_title(f"true {labels[c]}: {oa.pred[positions[c]]} / {ob.pred[positions[c]]}", fontsize=7)
    cell = "clean" if corruption == "none" else f"{corruption} severity {int(severity)}"
    return [ReportFigure("failures-side-by-side", f"Failures side by side: {a} and {b}",
                         f"{dataset}, {cell} (the cell where they disagree most, {best[0]} images): top row, images "
                         f"{a} gets wrong and {b} right; bottom row, the reverse. Titles: true class: {a}'s / {b}'s "
                         "prediction.", save(fig, fig_dir / "failures-side-by-side"))]
