"""`robustlab fit-rdsn`: its arguments and what it runs."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from robustlab.checkpoints import save_checkpoint
from robustlab.cli.arguments import Command, add_common, add_data, positive_int
from robustlab.data import DATASETS
from robustlab.device import resolve_device
from robustlab.fit_rdsn import RDSNConfig, fit_rdsn, fit_record
from robustlab.progress import progress_bars


def arguments(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument("--k", type=positive_int, default=2048, help="number of random blocks = features (default 2048)")
    p.add_argument("--depth", type=positive_int, default=3, help="sign layers per block (default 3)")
    p.add_argument("--kernel-size", type=positive_int, default=3)
    p.add_argument("--pool", choices=["none", "avg", "max"], default="none", help="2x2 pooling between layers")
    p.add_argument("--C", type=float, default=0.01, help="linear SVM regularization (default 0.01)")
    p.add_argument("--knn", type=positive_int, default=10, help="k of the k-NN retrieval precision (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random filters and offsets")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--out", required=True, help="checkpoint file to write")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    DATASETS.get(args.dataset)
    cfg = RDSNConfig(dataset=args.dataset, k=args.k, depth=args.depth, kernel_size=args.kernel_size, pool=args.pool,
                     seed=args.seed, C=args.C, knn=args.knn, batch_size=args.batch_size)
    model, metrics = fit_rdsn(cfg, data_dir=args.data_dir, device=resolve_device(args.device),
                              progress=progress_bars(args.quiet))
    save_checkpoint(model, args.out, **fit_record(cfg, metrics, DATASETS.get(args.dataset).test_split))
    if args.json:
        print(json.dumps({"checkpoint": args.out, **metrics, **asdict(cfg)}, indent=2))
    else:
        print(f"{args.out}: test top-1 {100 * metrics['top1']:.2f}%, top-2 {100 * metrics['top2']:.2f}%, "
              f"k-NN precision@{cfg.knn} {100 * metrics[f'knn_precision@{cfg.knn}']:.2f}%")
    return 0


COMMAND = Command("fit-rdsn", help="fit a random depthwise signed network: random features + linear SVM",
                  epilog="""examples:
  robustlab fit-rdsn --dataset digits --pool avg --out rdsn-digits.pt
  robustlab fit-rdsn --dataset cifar10 --data-dir D --k 4096 --depth 3 --out rdsn-c10.pt
no backpropagation: the random filters come from --seed (the checkpoint stores the seed, not the filters); only
the standardization and a linear SVM on the k features are fitted on the train split""",
                  arguments=arguments, run=run)
