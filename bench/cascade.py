"""What the worst-case mode (`eval --cascade`) saves: attack time of the demo's attack set run on every image
against the same set in the worst-case mode, side by side in one process, and that the worst case is the same.

    python bench/cascade.py [--device cpu|cuda] [--n 200] [--data-dir DIR]

The attack set is the demo's: PGD-10 Linf at 1/255, 2/255, 4/255 and 8/255 (attacks/fashion-pgd.toml) and Square
Linf at 8/255 with 100 queries (attacks/fashion-blackbox.toml), on the shipped Fashion-MNIST SDNet-18 and RDSN, the
first n test images (the built-in subset without --data-dir). Attack time is the sum of the attack rows' `seconds`
(diagnostics off, so only the attacks count); the target is at most 0.6x.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlab.attacks import load_attack_suite  # noqa: E402
from robustlab.config import EvalConfig  # noqa: E402
from robustlab.evaluation import evaluate  # noqa: E402
from robustlab.reports.paired import worst_case  # noqa: E402
from robustlab.reports.runs import load_runs, outcome_loader  # noqa: E402

MODELS = ("zoo:sdnet18-fashion", "zoo:rdsn-fashion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    attacks = (*load_attack_suite("fashion-pgd"), *load_attack_suite("fashion-blackbox"))
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for mode, cascade in (("every image", False), ("worst-case mode", True)):
            config = EvalConfig(ckpts=MODELS, dataset="fashion-mnist", data_dir=args.data_dir, n=args.n,
                                device=args.device, attacks=attacks, diagnostics=False, cascade=cascade, quiet=True,
                                out=str(Path(tmp) / mode.replace(" ", "-")))
            start = time.perf_counter()
            evaluate(config)
            wall = time.perf_counter() - start
            df = load_runs([config.out])[0]
            attacked = df[df["attack"] != "none"]
            runs[mode] = (attacked.groupby("model")["seconds"].sum(), wall,
                          worst_case(df, outcome_loader()).reset_index(drop=True))
        print(f"attack time, {args.n} images, {args.device} ({', '.join(MODELS)}; PGD-10 at 4 eps + Square 100):")
        full, cascaded = runs["every image"], runs["worst-case mode"]
        for model in full[0].index:
            print(f"  {model:<18} every image {full[0][model]:7.1f} s   worst-case mode {cascaded[0][model]:7.1f} s"
                  f"   {cascaded[0][model] / full[0][model]:.2f}x")
        total_full, total_cascade = full[0].sum(), cascaded[0].sum()
        print(f"  {'both':<18} every image {total_full:7.1f} s   worst-case mode {total_cascade:7.1f} s   "
              f"{total_cascade / total_full:.2f}x (target <= 0.6x); whole runs {full[1]:.1f} s and {cascaded[1]:.1f} s")
        same = full[2][["variant", "eps", "robust"]].equals(cascaded[2][["variant", "eps", "robust"]])
        print(f"worst case identical: {same}")
        print(cascaded[2][["variant", "eps", "n", "robust", "accuracy"]].to_string(index=False))


if __name__ == "__main__":
    main()
