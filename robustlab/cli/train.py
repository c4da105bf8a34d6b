"""`robustlab train`: its arguments and what it runs."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from robustlab.checkpoints import save_checkpoint
from robustlab.cli.arguments import Command, add_common, add_data, positive_int
from robustlab.data import DATASETS
from robustlab.device import resolve_device
from robustlab.models import ARCHS
from robustlab.progress import progress_bars
from robustlab.train import TrainConfig, train, training_record


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help=f"one of {', '.join(ARCHS)}")
    add_data(p)
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0 = 64..512)")
    p.add_argument("--stem-width", type=positive_int, help="channels of the stem (SDNet: CSC atoms), default "
                                                             "the body's first width; the official SDNet has 64")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lambda", dest="lmbda", type=float, default=0.1, help="CSC sparsity weight (SDNet only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    ARCHS.get(args.arch)
    DATASETS.get(args.dataset)
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, width=args.width, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, lmbda=args.lmbda, seed=args.seed,
                      stem_width=args.stem_width)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    model, acc = train(cfg, data_dir=args.data_dir, device=resolve_device(args.device),
                       progress=progress_bars(args.quiet), log=log)
    save_checkpoint(model, args.out, **training_record(cfg, acc, DATASETS.get(args.dataset).test_split))
    result = {"checkpoint": args.out, "test_accuracy": acc, **asdict(cfg)}
    print(json.dumps(result, indent=2) if args.json else f"{args.out}: test accuracy {100 * acc:.2f}%")
    return 0


COMMAND = Command("train", help="train a model from scratch (SGD, cosine schedule)",
                  epilog="""examples:
  robustlab train --arch sdnet18 --dataset digits --width 0.25 --epochs 30 --out sdnet18-digits.pt
  robustlab train --arch resnet18 --dataset cifar10 --data-dir D --epochs 200 --batch-size 128 --lr 0.1 --out r18.pt""",
                  arguments=arguments, run=run)
