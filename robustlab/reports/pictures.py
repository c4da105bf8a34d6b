"""Pictures in the report: the first test images under every corruption of a run at every severity, as the model
saw them (regenerated from the run's seed, or read from its --c-dir), and adversarial examples from `--save-adv`
files (clean, adversarial, the perturbation scaled to be visible, and the classes predicted before and after)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

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


def _first_images(run: Run, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's first n clean test images (uint8 NHWC) and labels."""
    from robustlab.data import load_dataset
    args = run.manifest["arguments"]
    data = load_dataset(args["dataset"], args.get("data_dir"))
    images, labels = next(iter(data.batches(n, n)))
    return images.permute(0, 2, 3, 1).numpy(), labels.numpy()


def _corrupted(run: Run, clean: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    """The first images of a corruption cell as the run evaluated them."""
    args = run.manifest["arguments"]
    suite = run.manifest.get("corruption_suite") or {}
    if args.get("c_dir"):
        from robustlab.data.corrupted import load_cifar_c, load_imagenet_c
        data = load_imagenet_c(args["c_dir"], corruption, severity) if args["dataset"] == "imagenet" else \
            load_cifar_c(args["c_dir"], corruption, severity, name=args["dataset"], num_classes=0)
        images, _ = next(iter(data.batches(len(clean), len(clean))))
        return images.permute(0, 2, 3, 1).numpy()
    from robustlab.corruptions.engine import corrupt
    table = suite.get("table") or ("imagenet" if args["dataset"] == "imagenet" else "cifar")
    level = (suite.get("levels") or {}).get(f"{corruption}-{severity}")
    out = corrupt(clean[..., 0] if clean.shape[-1] == 1 else clean, corruption, severity, table=table,
                  seed=int(args.get("seed", 0)), param=level, reencode=suite.get("jpeg_reencode_quality") is not None)
    return out.reshape(clean.shape)


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
        clean, _ = _first_images(run, GALLERY_IMAGES)
        grid = {(c, s): _strip(_corrupted(run, clean, c, s)) for c, s in cells}
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
    figures = []
    for path in files:
        row = _adversarial_row(df, run, path)
        if row is None:
            continue
        clean_rows = df[(df["run_dir"] == str(run.path)) & (df["model"] == row["model"]) & (df["corruption"] == "none")
                        & (df["attack"] == "none") & (df["lambda_mode"] == row["lambda_mode"])]
        try:
            with np.load(path, allow_pickle=False) as npz:
                adversarial, labels = npz["adversarial"][:ADVERSARIAL_IMAGES], npz["labels"][:ADVERSARIAL_IMAGES]
            clean, _ = _first_images(run, len(labels))
        except (RobustlabError, OSError, ValueError, KeyError) as e:
            warn(f"adversarial examples of {path.name} skipped: {str(e).splitlines()[0]}")
            continue
        after = load(row)
        before = load(clean_rows.iloc[0]) if len(clean_rows) else None
        clean = clean.astype(np.float32) / 255
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
            save(fig, fig_dir / f"adversarial-{stem}-{path.stem}")))
    return figures


def _label(pred: int | None) -> str:
    return "?" if pred is None else str(int(pred))
