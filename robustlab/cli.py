"""The `robustlab` command: eval, train, demo, list. Bad input: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from robustlab.allocator import keep_freed_memory
from robustlab.errors import RobustlabError, write_error

EXIT_BAD_INPUT = 2
# a write that failed for lack of space or permission (corrupt, report, ...): one line, not a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _select_n(text: str) -> int | str:
    from robustlab.config import ALL_IMAGES
    return ALL_IMAGES if text == ALL_IMAGES else _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line too (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _severities(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected severities like 1,3,5, got {text!r}") from None
    if not values or any(v not in (1, 2, 3, 4, 5) for v in values):
        raise argparse.ArgumentTypeError(f"severities must be in 1..5, got {text!r}")
    return values


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
    from robustlab.config import EvalConfig
    from robustlab.evaluation import evaluate
    run, records = evaluate(EvalConfig.from_cli(args, tuple(_attack_specs(args))))
    if run is not None:  # under torchrun only rank 0 reports
        _report(run, records, args.json)
    return 0


def _attack_specs(args: argparse.Namespace) -> list:
    from robustlab.config import attack_specs, comma_list
    return attack_specs(args.attacks, args.attack, eps=comma_list(args.eps), norm=args.norm, steps=args.steps,
                        alpha=args.alpha, restarts=args.restarts, queries=args.queries,
                        transfer_from=comma_list(args.transfer_from))


def _report(run, records: list, as_json: bool) -> None:
    """The records, the corruption summary when there are corruption rows, and where the results are."""
    _print_records(records, as_json)
    if as_json:
        return
    if run.resumed:
        print(f"resumed: {run.done_before} cells were already in results.csv, {len(records)} ran now")
    if any(r.corruption != "none" for r in records):
        import pandas as pd

        from robustlab.reports.metrics import corruption_summary
        print()
        summary = corruption_summary(pd.DataFrame([r.row() for r in records]))  # the records in hand, not the file
        print(summary.to_string(index=False, float_format="%.4f"))
    print(f"results: {run.path / 'results.csv'}")


def cmd_demo(args: argparse.Namespace) -> int:
    from robustlab.demo import DEMOS, compact_table, run_demo
    result = run_demo(args.dataset, n=args.n, out=args.out, batch_size=args.batch_size, device=args.device,
                      quiet=args.quiet)
    if args.json or args.verbose:
        _print_records(result.records, args.json)
        if args.json:
            return 0
    a, b = result.calibration_fit
    spec = DEMOS[args.dataset]
    print(f"{args.dataset}{' (built-in subset)' if args.dataset == 'fashion-mnist' else ''}: Algorithm 1 "
          f"calibrated {spec.models[0]} on gaussian noise: lambda = {a:.3g} * residual + {b:.3g}")
    print(compact_table(result.records, result.report.tables["worst-case"]).to_string(index=False))
    print("accuracy in %; corruptions: mean over the 15 benchmark corruptions x 5 severities; noise/blur/weather/"
          "digital: family means")
    print(f"results: {result.run.path / 'results.csv'}\nreport: {result.report.html}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from robustlab.calibrate import calibrate_checkpoint
    from robustlab.config import CalibrateConfig
    calib, figures = calibrate_checkpoint(CalibrateConfig.from_cli(args))
    if args.json:
        print(json.dumps(calib.to_json(), indent=2))
        return 0
    print(f"calibrated on {calib.n} images of {calib.calibration_split} ({args.noise} noise)")
    for p in calib.points:
        print(f"  level {p['level']:<6g} best lambda {p['lambda']:<8.4g} residual {p['residual']:.4g} "
              f"accuracy {100 * p['accuracy']:.1f}%")
    print(f"fit: lambda = {calib.fit.a:.4g} * r + {calib.fit.b:.4g} (R^2 {calib.fit.r2:.3f})")
    print(f"wrote {args.out} and {', '.join(str(f) for f in figures)}")
    return 0


def _add_official_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--official-config", metavar="FILE.yaml",
                   help="the official SDNet experiment configuration an official checkpoint was trained with (its "
                        "FISTA steps, mu, lambda, ...); default: a YAML file of the checkpoint's stem beside it, "
                        "else the official defaults (the manifest says which)")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.02,0.1, got {text!r}") from None


def _levels(text: str) -> list[float] | str:
    """Noise levels as numbers, or the name (or file) of a suite that lists them."""
    return text if not text[:1].isdigit() and not text.startswith(".") else _floats(text)


def cmd_corrupt(args: argparse.Namespace) -> int:
    from robustlab.corrupt import layout_corruptions, write_c_layout, write_folder_layout
    from robustlab.corruptions.pool import CorruptionPool, default_workers
    from robustlab.data import load_dataset
    from robustlab.data.imagenet import FolderImageSet
    from robustlab.device import resolve_device
    from robustlab.distributed import shard_from_env
    from robustlab.evaluation import corruption_suite
    from robustlab.progress import progress_bars

    suite = corruption_suite(args.corruptions, dataset=args.dataset, severities=None)
    names = layout_corruptions(suite)
    base = load_dataset(args.dataset, args.data_dir, args.split)
    shard = shard_from_env()
    folders = isinstance(base, FolderImageSet)  # ImageNet: the published JPEG folders
    write = write_folder_layout if folders else write_c_layout
    with CorruptionPool(args.workers or default_workers()) as pool:
        paths = write(base, args.out, names, table=args.table or suite.table, seed=args.seed, n=args.n,
                      batch_size=args.batch_size, device=resolve_device(args.device),
                      progress=progress_bars(args.quiet), overwrite=args.overwrite, reencode=suite.reencode,
                      pool=pool, shard=shard)
    rank = f"rank {shard.rank} of {shard.world}: " if shard.world > 1 else ""
    done = f"{rank}{len(paths)} of {len(names)} corruptions complete in {args.out}"
    if len(paths) < len(names):
        done += " (the other ranks write the rest" + ("" if folders else "; the one finishing a corruption's last "
                                                      "share assembles it") + ")"
    elif not folders:
        done += ", and labels.npy"
    print(json.dumps([str(p) for p in paths]) if args.json else done)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from robustlab.reports.report import build_report
    files = build_report([Path(d) for d in args.runs], Path(args.out), baseline=args.baseline)
    if args.json:
        print(json.dumps({"markdown": str(files.markdown), "html": str(files.html),
                          "figures": [str(f) for f in files.figures], "warnings": files.warnings}, indent=2))
        return 0
    for w in files.warnings:
        print(f"robustlab: warning: {w}", file=sys.stderr)
    print(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figure files")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from robustlab.reports.leaderboard import build_leaderboard
    if Path(args.out).suffix.lower() not in (".html", ".htm"):
        raise RobustlabError(f"--out {args.out} is not an .html file; pass a page name, e.g. --out board.html")
    board = build_leaderboard(args.runs, Path(args.out), baseline=args.baseline)
    if args.json:
        print(board.to_json(orient="records", indent=2))
    else:
        print(f"wrote {args.out}: {len(board)} rows")
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from robustlab.regress import compare, exit_code, regress
    from robustlab.schema import read_results
    if not args.json:
        return regress(args.baseline, args.current, max_drop=args.max_drop, alpha=args.alpha,
                       correction=args.correction)
    result = compare(read_results(args.baseline), read_results(args.current), max_drop=args.max_drop,
                     alpha=args.alpha, correction=args.correction)
    print(result.to_json())
    return exit_code(result)


def cmd_metrics(args: argparse.Namespace) -> int:
    from robustlab.reports.metrics import corruption_summary, read_all, resolve_baseline
    from robustlab.reports.paired import worst_case
    from robustlab.reports.runs import load_runs, outcome_loader
    df = read_all(args.results)
    baseline = resolve_baseline(args.baseline)
    table = corruption_summary(df, baseline=baseline, alexnet=args.alexnet)
    runs, _, _ = load_runs(args.results)
    worst = worst_case(runs.assign(variant=runs["base_variant"]), outcome_loader())
    if args.json:
        table["worst_case"] = [worst[worst["variant"] == m].drop(columns="variant").to_dict("records")
                               for m in table["model"]]
        print(table.to_json(orient="records", indent=2))
        return 0
    print(table.to_string(index=False, float_format="%.4f"))
    if len(worst):
        print("\nrobust accuracy under every attack (worst case):")
        print(worst.to_string(index=False, float_format="%.4f"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from robustlab.checkpoints import save_checkpoint
    from robustlab.data import DATASETS
    from robustlab.device import resolve_device
    from robustlab.models import ARCHS
    from robustlab.progress import progress_bars
    from robustlab.train import TrainConfig, train, training_record

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


def cmd_fit_rdsn(args: argparse.Namespace) -> int:
    from robustlab.checkpoints import save_checkpoint
    from robustlab.data import DATASETS
    from robustlab.device import resolve_device
    from robustlab.fit_rdsn import RDSNConfig, fit_rdsn, fit_record
    from robustlab.progress import progress_bars

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


def cmd_list(args: argparse.Namespace) -> int:
    from robustlab.attacks import ATTACKS
    from robustlab.checkpoints import zoo_names
    from robustlab.corruptions import BENCHMARK, CORRUPTIONS
    from robustlab.corruptions.engine import KIND_SUMMARY
    from robustlab.data import DATASETS
    from robustlab.models import ARCHS
    from robustlab.suites import suite_names

    tables: dict[str, Callable[[], list[tuple[str, str]]]] = {
        "models": lambda: [(n, s.summary) for n, s in ARCHS.items()] +
                          [("torchvision:NAME / timm:NAME", "any torchvision or timm architecture")],
        "datasets": lambda: [(n, s.summary) for n, s in DATASETS.items()],
        "zoo": lambda: [(f"zoo:{n}", "shipped checkpoint") for n in zoo_names()],
        "corruptions": lambda: [(n, f"{c.family}{'' if n in BENCHMARK else ' (extra)'}, "
                                    f"{KIND_SUMMARY[c.kind]}{'; batched torch on GPU' if c.on_accelerator else ''}")
                            for n, c in CORRUPTIONS.items()],
        "attacks": lambda: [(n, f"{'white-box' if e.white_box else 'black-box'}, {'/'.join(e.norms)}")
                            for n, e in ATTACKS.items()],
        "suites": lambda: [(f"corruptions/{n}", "corruption suite") for n in suite_names("corruptions")] +
                          [(f"attacks/{n}", "attack suite") for n in suite_names("attacks")],
    }
    rows = tables[args.what]()
    if args.json:
        print(json.dumps([{"name": n, "summary": s} for n, s in rows], indent=2))
        return 0
    width = max(len(n) for n, _ in rows)
    print("\n".join(f"{n.ljust(width)}  {s}" for n, s in rows))
    return 0


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help and examples, the arguments it takes and what it runs."""
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None
    formatter_class: type = argparse.RawDescriptionHelpFormatter


def _add_workers(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--workers", type=_positive_int, help="processes corrupting batches on the CPU, beside the rest "
                   f"of the work (default: {default}; the bytes do not depend on it)")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    from robustlab.config import DEFAULT_SELECT_N
    p.add_argument("--ckpt", required=True, help="checkpoint file, zoo:NAME or robustbench:NAME; a comma list "
                                                 "evaluates several models on the same cells")
    p.add_argument("--arch", help="architecture, when the checkpoint does not say (see `robustlab list models`)")
    _add_official_config(p)
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, imagenet, fashion-mnist, mnist or digits")
    p.add_argument("--data-dir", help="where the dataset lies on disk (not needed for digits)")
    p.add_argument("--n", type=_positive_int, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--seed", type=int, default=0, help="recorded with every row")
    p.add_argument("--corruptions", help="a suite (cifar10-c, imagenet-c, ... or a .toml file) or a comma list of "
                                         "corruption names (see `robustlab list corruptions`)")
    p.add_argument("--severities", type=_severities, help="e.g. 1,3,5 (default: the suite's, else 1..5)")
    p.add_argument("--c-dir", help="read the published corrupted files (CIFAR-10-C npy / ImageNet-C folders) "
                                   "instead of generating them")
    _add_workers(p, "1 with the model on the CPU, whose cores it keeps busy; on a GPU the cores, shared among the "
                    "ranks torchrun starts on a machine")
    p.add_argument("--lambda", dest="lmbda", type=float, help="fixed lambda of the first CSC layer (SDNet)")
    p.add_argument("--adaptive-lambda", metavar="CALIB.json", help="add rows with lambda chosen by Algorithm 1 "
                                                                   "(per test set; see robustlab calibrate)")
    p.add_argument("--per-image", action="store_true", help="with --adaptive-lambda: choose lambda per image")
    p.add_argument("--select-n", type=_select_n, metavar="N|all", help="with --adaptive-lambda, per set: choose lambda "
                   f"on a seeded sample of N of each set's images (default {DEFAULT_SELECT_N}; rows on a sample carry "
                   "lambda_low..lambda_high, 95%% bounds of the whole set's choice); all: every image, the exact rule")
    p.add_argument("--lambda-sweep", metavar="GRID", help="a row per lambda: 0.1:1.4:14, geom:0.1:0.3:14, "
                                                          "a comma list, official or default")
    p.add_argument("--attack", help="an attack (see robustlab list attacks)")
    p.add_argument("--eps", help="attack radius, 8/255 or 0.0314; a comma list sweeps eps")
    p.add_argument("--norm", choices=["Linf", "L2"], help="default: the attack's own")
    p.add_argument("--steps", type=_positive_int, help="gradient iterations per restart (PGD, APGD)")
    p.add_argument("--queries", type=_positive_int, help="model queries of a score-based attack (Square)")
    p.add_argument("--alpha", help="step size (PGD default 2.5 * eps / steps)")
    p.add_argument("--restarts", type=_positive_int, default=1)
    p.add_argument("--attacks", metavar="SUITE", help="a shipped attack suite (robustlab list suites) or a .toml file")
    p.add_argument("--transfer-from", metavar="CKPT[,CKPT]", help="craft the attack on these models and evaluate "
                                                                  "--ckpt on their adversarial examples")
    p.add_argument("--cascade", action="store_true", help="worst-case mode: attacks run cheap first (by eps, then "
                   "white-box, transfer, black-box) and skip images already broken at that or a smaller eps; the "
                   "worst case is unchanged, a row that skipped images says so in its flags")
    p.add_argument("--save-adv", action="store_true", help="write adversarial examples (npz) to RUN_DIR/adversarial")
    p.add_argument("--skip-diagnostics", action="store_true", help="do not run the gradient-masking checks "
                                                                    "(64 images, a few extra attacks)")
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>-<time>); a directory that holds an "
                                 "interrupted run of the same command is resumed: only its unfinished cells run")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume into --out although its run was made with other arguments (each row keeps its own)")
    _add_common(p)


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True)
    p.add_argument("--arch")
    _add_official_config(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--split", default="train", help="calibration split (default train)")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "shot", "speckle", "impulse"])
    p.add_argument("--levels", type=_levels, help="noise levels (0.02,0.1,...) or a suite that lists them "
                   "(default noise-calibration: the official script's levels; noise-calibration-fine: twice as fine)")
    p.add_argument("--lambdas", default="default", help="grid: default (geometric, training lambda to 3x), "
                                                        "official (0.1..1.4), 0.1:1.4:14, geom:a:b:n or a list")
    p.add_argument("--layer", type=int, default=0, help="which CSC layer's lambda adapts (default the first)")
    p.add_argument("--n", type=_positive_int, default=500, help="calibration images (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--out", required=True, help="calibration JSON (a figure is written beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its figure)")
    _add_common(p)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0 = 64..512)")
    p.add_argument("--stem-width", type=_positive_int, help="channels of the stem (SDNet: CSC atoms), default "
                                                             "the body's first width; the official SDNet has 64")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lambda", dest="lmbda", type=float, default=0.1, help="CSC sparsity weight (SDNet only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write")
    _add_common(p)


def _fit_rdsn_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--k", type=_positive_int, default=2048, help="number of random blocks = features (default 2048)")
    p.add_argument("--depth", type=_positive_int, default=3, help="sign layers per block (default 3)")
    p.add_argument("--kernel-size", type=_positive_int, default=3)
    p.add_argument("--pool", choices=["none", "avg", "max"], default="none", help="2x2 pooling between layers")
    p.add_argument("--C", type=float, default=0.01, help="linear SVM regularization (default 0.01)")
    p.add_argument("--knn", type=_positive_int, default=10, help="k of the k-NN retrieval precision (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random filters and offsets")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--out", required=True, help="checkpoint file to write")
    _add_common(p)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"],
                   help="fashion-mnist (the built-in subset, default) or digits")
    p.add_argument("--n", type=_positive_int, help="first N test images per cell (default 300 on fashion-mnist, "
                                                   "all 450 on digits)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--out", help="run directory (default runs/demo-<dataset>-<time>)")
    p.add_argument("--verbose", action="store_true", help="also print every row")
    _add_common(p)


def _corrupt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--split", help="default: the evaluation split")
    p.add_argument("--out", required=True, help="directory for <corruption>.npy and labels.npy, or for ImageNet "
                   "<corruption>/<severity>/<wnid>/<file> (an interrupted run into it keeps what it finished)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    _add_workers(p, "the cores, shared among the ranks torchrun starts on a machine")
    p.add_argument("--corruptions", default="cifar10-c", help="suite or comma list (default cifar10-c)")
    p.add_argument("--table", choices=["cifar", "imagenet"], help="parameter table (default: the suite's)")
    p.add_argument("--n", type=_positive_int, help="first N images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    _add_common(p)


def _metrics_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results.csv files or run directories")
    p.add_argument("--baseline", help="model name (or results file) whose errors normalize CE")
    p.add_argument("--alexnet", action="store_true", help="also ImageNet-C mCE normalized by AlexNet's errors")
    p.add_argument("--json", action="store_true")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (or results.csv files)")
    p.add_argument("--baseline", help="model (variant) whose errors normalize CE / mCE")
    p.add_argument("--out", required=True, help="directory for report.md, report.html and figures")
    p.add_argument("--json", action="store_true")


def _leaderboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (or results.csv files)")
    p.add_argument("--baseline", help="model (variant) whose errors normalize CE / mCE")
    p.add_argument("--out", required=True, help="the page to write (.html)")
    p.add_argument("--json", action="store_true", help="also print the board's rows as JSON")


def _regress_arguments(p: argparse.ArgumentParser) -> None:
    from robustlab.regress import CORRECTIONS
    p.add_argument("baseline", help="baseline results.csv (or run directory)")
    p.add_argument("current", help="current results.csv (or run directory)")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points a cell may lose (default 1.0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--correction", choices=CORRECTIONS, default="none",
                   help="holm: adjust the cells' p-values so that any false alarm over all cells has chance < alpha")
    p.add_argument("--json", action="store_true", help="every matched cell as JSON instead of the table")


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["models", "datasets", "corruptions", "attacks", "suites", "zoo"])
    p.add_argument("--json", action="store_true")


COMMANDS = (
    Command("eval", help="evaluate a checkpoint", epilog="""examples:
  robustlab eval --ckpt zoo:sdnet18-digits --dataset digits
  robustlab eval --ckpt sdnet18/model_best.pth.tar --dataset cifar10 --data-dir ~/data/cifar-10-batches-py
  robustlab eval --ckpt resnet.pt --arch resnet18 --dataset cifar10 --data-dir D --n 1000 --out runs/r18
  robustlab eval --ckpt m.pt --dataset cifar10 --data-dir D --corruptions cifar10-c --c-dir ~/data/CIFAR-10-C
  robustlab eval --ckpt m.pt --dataset cifar10 --data-dir D --corruptions gaussian_noise,fog --severities 1,3,5
  robustlab eval --ckpt m.pt --dataset cifar10 --data-dir D --attack pgd-linf --eps 2/255,4/255,8/255 --steps 10
  robustlab eval --ckpt zoo:resnet18-digits --dataset digits --attack square --eps 8/255 --queries 1000 \
      --transfer-from zoo:sdnet18-digits
  torchrun --nproc-per-node 4 -m robustlab eval --ckpt m.pt --dataset cifar10 --data-dir D --corruptions cifar10-c
      (one process per GPU; the images are sharded, rank 0 writes; results equal a single-process run)""",
            arguments=_eval_arguments, run=cmd_eval),
    Command("calibrate", help="Algorithm 1: fit lambda against the CSC residual on synthetic noise",
            epilog="""examples:
  robustlab calibrate --ckpt zoo:sdnet18-digits --dataset digits --out calib.json
  robustlab calibrate --ckpt sdnet18.pth.tar --dataset cifar10 --data-dir D --noise shot --lambdas official --out c.json
the calibration images come from the train split (disjoint from the test images) unless --split says otherwise""",
            arguments=_calibrate_arguments, run=cmd_calibrate),
    Command("train", help="train a model from scratch (SGD, cosine schedule)",
            epilog="""examples:
  robustlab train --arch sdnet18 --dataset digits --width 0.25 --epochs 30 --out sdnet18-digits.pt
  robustlab train --arch resnet18 --dataset cifar10 --data-dir D --epochs 200 --batch-size 128 --lr 0.1 --out r18.pt""",
            arguments=_train_arguments, run=cmd_train),
    Command("fit-rdsn", help="fit a random depthwise signed network: random features + linear SVM",
            epilog="""examples:
  robustlab fit-rdsn --dataset digits --pool avg --out rdsn-digits.pt
  robustlab fit-rdsn --dataset cifar10 --data-dir D --k 4096 --depth 3 --out rdsn-c10.pt
no backpropagation: the random filters come from --seed (the checkpoint stores the seed, not the filters); only
the standardization and a linear SVM on the k features are fitted on the train split""",
            arguments=_fit_rdsn_arguments, run=cmd_fit_rdsn),
    Command("demo", help="the whole pipeline on built-in Fashion-MNIST (or digits) and shipped checkpoints",
            epilog="example:\n  robustlab demo --out runs/demo",
            arguments=_demo_arguments, run=cmd_demo),
    Command("corrupt", help="write a corrupted copy of a split in the published layout (CIFAR-10-C's arrays; "
                            "ImageNet-C's JPEG folders for imagenet)",
            epilog="""examples:
  robustlab corrupt --dataset cifar10 --data-dir D --out cifar10-c
  robustlab corrupt --dataset digits --out digits-c --corruptions gaussian_noise,fog --seed 1
  torchrun --nnodes 4 --nproc-per-node 1 ... -m robustlab corrupt --dataset imagenet --data-dir D --out shared/in-c
      (each rank corrupts every world-th batch: ImageNet-C's files; for arrays its own part, which the rank
       finishing a corruption's last part assembles)""",
            arguments=_corrupt_arguments, run=cmd_corrupt),
    Command("metrics", help="mean corruption accuracy, mCE and relative mCE of result files",
            epilog="""examples:
  robustlab metrics runs/sdnet runs/resnet --baseline resnet18
  robustlab metrics runs/in-c/results.csv --alexnet""",
            arguments=_metrics_arguments, run=cmd_metrics),
    Command("report", help="compare runs: Markdown and HTML tables, PNG/SVG figures",
            epilog="""examples:
  robustlab report runs/sdnet runs/resnet --baseline resnet18 --out reports/cmp
  robustlab report runs/demo-20261122-1200 --out /tmp/demo-report   # then open /tmp/demo-report/report.html""",
            arguments=_report_arguments, run=cmd_report),
    Command("leaderboard", help="one sortable HTML page: a row per model variant over any runs",
            epilog="""examples:
  robustlab leaderboard runs/* --out board.html
  robustlab leaderboard runs/sdnet runs/resnet --baseline resnet18 --out reports/board.html""",
            arguments=_leaderboard_arguments, run=cmd_leaderboard),
    Command("regress", help="CI gate: fail on a significant drop of any cell's accuracy",
            epilog="""examples:
  robustlab regress reports/baseline.csv runs/ci/results.csv
  robustlab regress base.csv new.csv --max-drop 2 --alpha 0.01
exit 0: no cell dropped by more than --max-drop points with one-sided p < --alpha (exact McNemar where both
files carry per-image outcomes of the same images, else the two-proportion z-test; the table names which);
exit 1: some did (listed); exit 2: a baseline cell is missing (or has n = 0) or the files' schemas differ""",
            arguments=_regress_arguments, run=cmd_regress),
    Command("list", help="list models, datasets, corruptions, suites or shipped checkpoints",
            epilog="example: robustlab list models",
            arguments=_list_arguments, run=cmd_list),
)


def build_parser() -> argparse.ArgumentParser:
    from robustlab.version import __version__
    parser = _Parser(prog="robustlab", description="Robustness evaluation of image classifiers.")
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, epilog=command.epilog,
                           formatter_class=command.formatter_class)
        command.arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        if getattr(args, "out", None):  # eval, calibrate, corrupt, ...: the system's limit, before any work
            from robustlab.files import check_path_length
            check_path_length(args.out, "--out")
        return args.func(args)
    except RobustlabError as e:
        print(f"robustlab: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader went away (`robustlab ... | head`): stop quietly (before OSError, its base)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"robustlab: error: {write_error(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("robustlab: interrupted; every finished cell is saved in the run's results.csv: run the same command "
              "again to resume", file=sys.stderr)
        return 130
