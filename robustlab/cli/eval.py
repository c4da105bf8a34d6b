"""`robustlab eval`: its arguments and what it runs."""
from __future__ import annotations

import argparse

import pandas as pd

from robustlab.attacks import ATTACKS
from robustlab.attacks.spec import NORMS
from robustlab.cli.arguments import (
    Command,
    add_common,
    add_data,
    add_official_config,
    add_workers,
    positive_int,
    print_records,
    select_n,
    severities,
)
from robustlab.config import ALL_IMAGES, DEFAULT_SELECT_N, EvalConfig, attack_specs, comma_list
from robustlab.evaluation import evaluate
from robustlab.models import ARCHS
from robustlab.reports.metrics import corruption_summary
from robustlab.suites import suite_names


def arguments(p: argparse.ArgumentParser) -> None:
    models = p.add_argument_group("models")
    models.add_argument("--ckpt", required=True, help="checkpoint file, zoo:NAME or robustbench:NAME; a comma list "
                                                      "evaluates several models on the same cells")
    models.add_argument("--arch", help=f"architecture, when the checkpoint does not say: {', '.join(ARCHS)}, "
                                       "torchvision:NAME or timm:NAME")
    add_official_config(models)
    data = p.add_argument_group("data")
    add_data(data)
    data.add_argument("--n", type=positive_int, help="evaluate the first N images only")
    corruptions = p.add_argument_group("corruptions")
    corruptions.add_argument("--corruptions", help=f"a suite ({', '.join(suite_names('corruptions'))} or a .toml "
                                                   "file) or a comma list of corruption names (robustlab list "
                                                   "corruptions)")
    corruptions.add_argument("--severities", type=severities, help="e.g. 1,3,5 (default: the suite's, else 1..5)")
    corruptions.add_argument("--c-dir", help="read the published corrupted files (CIFAR-10-C npy / ImageNet-C "
                                             "folders) instead of generating them")
    attacks = p.add_argument_group("attacks")
    attacks.add_argument("--attack", help=f"one of {', '.join(ATTACKS)}")
    attacks.add_argument("--eps", help="attack radius, 8/255 or 0.0314; a comma list sweeps eps")
    attacks.add_argument("--norm", choices=NORMS, help="default: the attack's own")
    attacks.add_argument("--steps", type=positive_int, help="gradient iterations per restart (PGD, APGD, FAB)")
    attacks.add_argument("--queries", type=positive_int, help="model queries of a score-based attack (Square)")
    attacks.add_argument("--alpha", help="step size (PGD default 2.5 * eps / steps)")
    attacks.add_argument("--restarts", type=positive_int, default=1)
    attacks.add_argument("--attacks", metavar="SUITE", help=f"an attack suite ({', '.join(suite_names('attacks'))}) "
                                                            "or a .toml file")
    attacks.add_argument("--transfer-from", metavar="CKPT[,CKPT]", help="craft the attack on these models and "
                                                                        "evaluate --ckpt on their adversarial examples")
    attacks.add_argument("--cascade", action="store_true", help="worst-case mode: attacks run cheap first (by eps, "
                         "then white-box, transfer, black-box) and skip images already broken at that or a smaller "
                         "eps; the worst case is unchanged, a row that skipped images says so in its flags")
    attacks.add_argument("--skip-diagnostics", action="store_true", help="do not run the gradient-masking checks "
                                                                          "(64 images, a few extra attacks)")
    lmbda = p.add_argument_group("lambda (SDNet)")
    lmbda.add_argument("--lambda", dest="lmbda", type=float, help="fixed lambda of the first CSC layer")
    lmbda.add_argument("--adaptive-lambda", metavar="CALIB.json", help="add rows with lambda chosen by Algorithm 1 "
                                                                       "(per test set; see robustlab calibrate)")
    lmbda.add_argument("--per-image", action="store_true", help="with --adaptive-lambda: choose lambda per image")
    lmbda.add_argument("--select-n", type=select_n, metavar=f"N|{ALL_IMAGES}", help="with --adaptive-lambda, per "
                       f"set: choose lambda on a seeded sample of N of each set's images (default {DEFAULT_SELECT_N}; "
                       "rows on a sample carry lambda_low..lambda_high, 95%% bounds of the whole set's choice); "
                       f"{ALL_IMAGES}: every image, the exact rule")
    lmbda.add_argument("--lambda-sweep", metavar="GRID", help="a row per lambda: 0.1:1.4:14, geom:0.1:0.3:14, "
                                                              "a comma list, official or default")
    output = p.add_argument_group("output")
    output.add_argument("--out", help="run directory (default runs/<model>-<dataset>-<time>); a directory that holds "
                                      "an interrupted run of the same command is resumed: only its unfinished cells "
                                      "run")
    output.add_argument("--allow-config-change", action="store_true", help="resume into --out although its run was "
                        "made with other arguments (each row keeps its own)")
    output.add_argument("--save-adv", action="store_true", help="write adversarial examples (npz) to "
                                                                "RUN_DIR/adversarial")
    execution = p.add_argument_group("execution")
    execution.add_argument("--batch-size", type=positive_int, default=256)
    execution.add_argument("--seed", type=int, default=0, help="recorded with every row")
    add_workers(execution, "1 with the model on the CPU, whose cores it keeps busy; on a GPU the cores, shared among "
                           "the ranks torchrun starts on a machine")
    add_common(execution)


def run(args: argparse.Namespace) -> int:
    run, records = evaluate(EvalConfig.from_cli(args, tuple(_attack_specs(args))))
    if run is not None:  # under torchrun only rank 0 reports
        _report(run, records, args.json)
    return 0


def _attack_specs(args: argparse.Namespace) -> list:
    return attack_specs(args.attacks, args.attack, eps=comma_list(args.eps), norm=args.norm, steps=args.steps,
                        alpha=args.alpha, restarts=args.restarts, queries=args.queries,
                        transfer_from=comma_list(args.transfer_from))


def _report(run, records: list, as_json: bool) -> None:
    """The records, the corruption summary when there are corruption rows, and where the results are."""
    print_records(records, as_json)
    if as_json:
        return
    if run.resumed:
        print(f"resumed: {run.done_before} cells were already in results.csv, {len(records)} ran now")
    if any(r.corruption != "none" for r in records):
        print()
        summary = corruption_summary(pd.DataFrame([r.row() for r in records]))  # the records in hand, not the file
        print(summary.to_string(index=False, float_format="%.4f"))
    print(f"results: {run.path / 'results.csv'}")


COMMAND = Command("eval", help="evaluate a checkpoint", epilog="""examples:
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
                  arguments=arguments, run=run)
