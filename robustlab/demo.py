"""`robustlab demo`: the whole pipeline on built-in data and shipped checkpoints — Algorithm 1's calibration, the 15
corruptions at 5 severities, PGD at several eps, a black-box attack on the RDSN — then one compact table and a
report in the run directory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from robustlab.attacks import load_attack_suite
from robustlab.calibrate import calibrate_checkpoint
from robustlab.config import CalibrateConfig, EvalConfig
from robustlab.corruptions import BENCHMARK, CORRUPTIONS
from robustlab.errors import RobustlabError
from robustlab.evaluation import evaluate
from robustlab.reports.metrics import variants
from robustlab.reports.report import ReportFiles, build_report
from robustlab.reports.style import format_eps, pct
from robustlab.rundir import RunDir, default_run_dir, refuse_existing_run
from robustlab.schema import NONE, Record


@dataclass(frozen=True)
class Blackbox:
    """A model without gradients (the RDSN), attacked black-box only: its zoo name, attack suite and images."""
    model: str
    attacks: str
    n: int


@dataclass(frozen=True)
class DemoSpec:
    """What the demo runs on one built-in dataset."""
    dataset: str
    models: tuple[str, ...]  # zoo names; the first is the SDNet that Algorithm 1 calibrates
    attacks: str  # an attack suite for the trained models
    default_n: int  # test images per cell (the time budget: at most 5 minutes on 2 CPU cores)
    blackbox: Blackbox | None = None
    calibration_images: int = 300


DEMOS = {
    "fashion-mnist": DemoSpec("fashion-mnist", ("sdnet18-fashion", "resnet18-fashion"), "fashion-pgd", 300,
                              Blackbox("rdsn-fashion", "fashion-blackbox", 50)),
    "digits": DemoSpec("digits", ("sdnet18-digits", "resnet18-digits"), "digits-small", 450),
}
CORRUPTION_SUITE = "cifar10-c"  # the 15 benchmark corruptions with the CIFAR parameters (32x32 images)


@dataclass
class DemoResult:
    run: RunDir
    records: list[Record]
    report: ReportFiles
    calibration_fit: tuple[float, float]


def run_demo(dataset: str, *, n: int | None, out: str | Path | None, batch_size: int, device: str,
             quiet: bool) -> DemoResult:
    spec = DEMOS[dataset]
    out = Path(out) if out else default_run_dir(f"demo-{dataset}")
    refuse_existing_run(out)  # before the calibration writes into it
    calib_path = out / "calibration.json"
    calib, _ = calibrate_checkpoint(CalibrateConfig(
        f"zoo:{spec.models[0]}", dataset, str(calib_path), n=min(n or spec.calibration_images, spec.calibration_images),
        batch_size=batch_size, device=device, quiet=quiet, figure=str(out / "figures" / "lambda-residual")))
    n = n or spec.default_n
    run, records = evaluate(EvalConfig(ckpts=tuple(f"zoo:{m}" for m in spec.models), dataset=dataset, n=n,
                                       batch_size=batch_size, device=device, out=str(out), quiet=quiet,
                                       corruptions=CORRUPTION_SUITE, adaptive=str(calib_path), save_adv=True,
                                       attacks=tuple(load_attack_suite(spec.attacks))))
    runs = [out]
    if spec.blackbox is not None:
        blackbox = out / "blackbox"
        _, more = evaluate(EvalConfig(ckpts=(f"zoo:{spec.blackbox.model}",), dataset=dataset,
                                      n=min(n, spec.blackbox.n), batch_size=batch_size, device=device,
                                      out=str(blackbox), quiet=quiet, save_adv=True,
                                      attacks=tuple(load_attack_suite(spec.blackbox.attacks))))
        records += more
        runs.append(blackbox)
    report = build_report(runs, out)
    if run is None:  # evaluate gives the run to rank 0 only
        raise RobustlabError("robustlab demo runs in one process; start it without torchrun")
    return DemoResult(run, records, report, (calib.fit.a, calib.fit.b))


def compact_table(records: Sequence[Record], worst: pd.DataFrame | None = None) -> pd.DataFrame:
    """A row per model variant: clean accuracy, mean corruption accuracy, the four families' means, robust
    accuracy per attack and eps, and (from the report's worst-case table) the worst case over every attack per eps
    (in %)."""
    df = pd.DataFrame([r.row() for r in records])
    df["variant"] = variants(df)
    rows = []
    for variant, sub in df.groupby("variant", sort=False):
        clean = sub[(sub["corruption"] == NONE) & (sub["attack"] == NONE)]["accuracy"]
        row = {"variant": variant, "n": int(sub["n"].max()), "clean": pct(clean.mean(), 1)}
        corrupted = sub[sub["corruption"].isin(BENCHMARK) & (sub["attack"] == NONE)]
        row["mean_corruption_accuracy"] = pct(corrupted["accuracy"].mean(), 1)
        families = corrupted["corruption"].map(lambda c: CORRUPTIONS.get(c).family)
        for family in ("noise", "blur", "weather", "digital"):
            row[family] = pct(corrupted[families == family]["accuracy"].mean(), 1)
        for (attack, eps, source), hit in sub[sub["attack"] != NONE].groupby(["attack", "eps", "attack_source"]):
            label = f"{attack} {format_eps(eps, hit['norm'].iloc[0])}" + (f" from {source}" if source else "")
            row[label] = pct(hit["accuracy"].mean(), 1)
        for _, w in (worst[worst["variant"] == variant] if worst is not None else pd.DataFrame()).iterrows():
            row[f"worst case {format_eps(w['eps'], w['norm'])}"] = pct(w["accuracy"], 1)
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")
