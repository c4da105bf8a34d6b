"""The `robustlab` command: eval, train, demo, list. Bad input: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Callable, Sequence

from robustlab.errors import RobustlabError

EXIT_BAD_INPUT = 2
DEMO_MODELS = ("sdnet18-digits", "resnet18-digits")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result records as JSON instead of a table")


def _print_records(records: list, as_json: bool) -> None:
    from robustlab.reports import records_table
    if as_json:
        print(json.dumps([r.row() for r in records], indent=2, default=str))
    else:
        print(records_table(records))


def cmd_eval(args: argparse.Namespace) -> int:
    from robustlab.evaluate import evaluate
    run, records = evaluate([args.ckpt], dataset=args.dataset, data_dir=args.data_dir, arch=args.arch, n=args.n,
                            batch_size=args.batch_size, device=args.device, out=args.out, seed=args.seed,
                            quiet=args.quiet, arguments=_arguments(args))
    _print_records(records, args.json)
    if not args.json:
        print(f"results: {run.path / 'results.csv'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from robustlab.evaluate import evaluate
    run, records = evaluate([f"zoo:{m}" for m in DEMO_MODELS], dataset="digits", batch_size=args.batch_size,
                            device=args.device, out=args.out, quiet=args.quiet, arguments=_arguments(args))
    _print_records(records, args.json)
    if not args.json:
        print(f"results: {run.path / 'results.csv'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from robustlab.checkpoints import save_checkpoint
    from robustlab.progress import progress_bars
    from robustlab.runner import resolve_device
    from robustlab.train import TrainConfig, train, training_record
    from robustlab.data import DATASETS
    from robustlab.models import ARCHS

    ARCHS.get(args.arch)
    DATASETS.get(args.dataset)
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, width=args.width, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, lmbda=args.lmbda, seed=args.seed)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    model, acc = train(cfg, data_dir=args.data_dir, device=resolve_device(args.device),
                       progress=progress_bars(args.quiet), log=log)
    save_checkpoint(model, args.out, **training_record(cfg, acc, DATASETS.get(args.dataset).test_split))
    result = {"checkpoint": args.out, "test_accuracy": acc, **asdict(cfg)}
    print(json.dumps(result, indent=2) if args.json else f"{args.out}: test accuracy {100 * acc:.2f}%")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from robustlab.checkpoints import zoo_names
    from robustlab.data import DATASETS
    from robustlab.models import ARCHS

    tables: dict[str, Callable[[], list[tuple[str, str]]]] = {
        "models": lambda: [(n, s.summary) for n, s in ARCHS.items()] +
                          [("torchvision:NAME / timm:NAME", "any torchvision or timm architecture")],
        "datasets": lambda: [(n, s.summary) for n, s in DATASETS.items()],
        "zoo": lambda: [(f"zoo:{n}", "shipped checkpoint") for n in zoo_names()],
    }
    rows = tables[args.what]()
    width = max(len(n) for n, _ in rows)
    print("\n".join(f"{n.ljust(width)}  {s}" for n, s in rows))
    return 0


def _arguments(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def build_parser() -> argparse.ArgumentParser:
    from robustlab import __version__
    parser = argparse.ArgumentParser(prog="robustlab", description="Robustness evaluation of image classifiers.")
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("eval", help="evaluate a checkpoint", formatter_class=fmt, epilog="""examples:
  robustlab eval --ckpt zoo:sdnet18-digits --dataset digits
  robustlab eval --ckpt sdnet18/model_best.pth.tar --dataset cifar10 --data-dir ~/data/cifar-10-batches-py
  robustlab eval --ckpt resnet.pt --arch resnet18 --dataset cifar10 --data-dir D --n 1000 --out runs/r18""")
    p.add_argument("--ckpt", required=True, help="checkpoint file, zoo:NAME or robustbench:NAME")
    p.add_argument("--arch", help="architecture, when the checkpoint does not say (see `robustlab list models`)")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, imagenet or digits")
    p.add_argument("--data-dir", help="where the dataset lies on disk (not needed for digits)")
    p.add_argument("--n", type=_positive_int, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--seed", type=int, default=0, help="recorded with every row")
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>-<time>)")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train a model from scratch (SGD, cosine schedule)", formatter_class=fmt,
                       epilog="""examples:
  robustlab train --arch sdnet18 --dataset digits --width 0.25 --epochs 30 --out sdnet18-digits.pt
  robustlab train --arch resnet18 --dataset cifar10 --data-dir D --epochs 200 --batch-size 128 --lr 0.1 --out r18.pt""")
    p.add_argument("--arch", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0 = 64..512)")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lambda", dest="lmbda", type=float, default=0.1, help="CSC sparsity weight (SDNet only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the whole pipeline on built-in digits and shipped checkpoints",
                       formatter_class=fmt, epilog="example:\n  robustlab demo --out runs/demo")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--out", help="run directory (default runs/digits-<time>)")
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="list models, datasets or shipped checkpoints",
                       epilog="example: robustlab list models")
    p.add_argument("what", choices=["models", "datasets", "zoo"])
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RobustlabError as e:
        print(f"robustlab: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("robustlab: interrupted; finished rows are in results.csv", file=sys.stderr)
        return 130
