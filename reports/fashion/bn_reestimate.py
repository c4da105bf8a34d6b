"""Does re-estimating BatchNorm statistics at a raised lambda make a larger lambda pay off (issue 15 point 5)?

    python reports/fashion/bn_reestimate.py [--data-dir /usr/share/datasets/fashion-mnist] [--n 2000] [--calib 2000]

For SDNet-18 on Fashion-MNIST (zoo:sdnet18-fashion, 64-atom stem) and each lambda of the first CSC layer: accuracy
on the first --n test images, clean and under gaussian and impulse noise (severities 3 and 5), with the BatchNorm
statistics as trained and re-estimated at that lambda from --calib clean training images (the calibration images
Algorithm 1 may use; never the test images). Prints a table and writes reports/fashion/bn_reestimate.csv.
"""
from __future__ import annotations

import argparse
import copy
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import robustlab
from robustlab.corruptions import corrupt
from robustlab.counting import count_correct
from robustlab.data import ArrayImageSet, load_dataset, to_pixels

LAMBDAS = (0.1, 0.13, 0.16, 0.2, 0.3, 0.5)
SETS = (("clean", 0), ("gaussian_noise", 3), ("gaussian_noise", 5), ("impulse_noise", 3), ("impulse_noise", 5))


def reestimated(model: nn.Module, images: np.ndarray, batch_size: int = 250) -> nn.Module:
    """A copy whose BatchNorm running statistics are the plain averages over `images` at the current lambda."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
        m.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).contiguous()
            model(to_pixels(x, torch.device("cpu")))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--calib", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).with_name("bn_reestimate.csv")))
    args = ap.parse_args()
    test = load_dataset("fashion-mnist", args.data_dir)
    train = load_dataset("fashion-mnist", args.data_dir, "train")
    calib = train.images[np.random.default_rng(0).choice(len(train), args.calib, replace=False)]
    sets = {(c, s): test.images[:args.n] if s == 0 else corrupt(test.images[:args.n], c, s, parameters="cifar", seed=0)
            for c, s in SETS}
    labels = test.labels[:args.n]
    model = robustlab.load_model("zoo:sdnet18-fashion").eval()
    rows = []
    for lmbda in LAMBDAS:
        robustlab.set_lambda(model, lmbda)
        variants = {"as trained": model, "re-estimated": reestimated(model, calib)}
        for bn, net in variants.items():
            for (c, s), images in sets.items():
                data = ArrayImageSet(images, labels, name="fashion-mnist", split="test", num_classes=10)
                counts = count_correct(net, data.batches(250), torch.device("cpu"), top5=False)
                rows.append({"lambda": lmbda, "batchnorm": bn, "corruption": c, "severity": s, "n": counts.n,
                             "correct": counts.correct, "accuracy": counts.correct / counts.n})
                print(f"lambda {lmbda:<5} {bn:13s} {c:15s} {s}  {counts.correct / counts.n:.4f}", flush=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
