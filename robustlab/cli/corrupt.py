"""`robustlab corrupt`: its arguments and what it runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from robustlab.cli.arguments import Command, add_common, add_data, add_workers, positive_int
from robustlab.corrupt import layout_corruptions, write_c_layout, write_folder_layout
from robustlab.corruptions.parameters import OLD_PARAMETERS_KEY, PARAMETER_SETS
from robustlab.corruptions.pool import CorruptionPool, default_workers
from robustlab.data import load_dataset
from robustlab.data.imagenet import FolderImageSet
from robustlab.device import resolve_device
from robustlab.distributed import shard_from_env
from robustlab.evaluation import corruption_suite
from robustlab.progress import progress_bars


def arguments(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument("--split", help="default: the evaluation split")
    p.add_argument("--out", required=True, help="directory for <corruption>.npy and labels.npy, or for ImageNet "
                   "<corruption>/<severity>/<wnid>/<file> (an interrupted run into it keeps what it finished)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    add_workers(p, "the cores, shared among the ranks torchrun starts on a machine")
    p.add_argument("--corruptions", default="cifar10-c", help="suite or comma list (default cifar10-c)")
    p.add_argument("--parameters", choices=list(PARAMETER_SETS), help="parameter set (default: the suite's)")
    # the option's old name, still accepted so scripts keep working
    p.add_argument(f"--{OLD_PARAMETERS_KEY}", dest="parameters", choices=list(PARAMETER_SETS), help=argparse.SUPPRESS)
    p.add_argument("--n", type=positive_int, help="first N images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    suite = corruption_suite(args.corruptions, dataset=args.dataset, severities=None)
    names = layout_corruptions(suite)
    base = load_dataset(args.dataset, args.data_dir, args.split)
    shard = shard_from_env()
    folders = isinstance(base, FolderImageSet)  # ImageNet: the published JPEG folders
    # Callable[...]: the two writers differ in the image set they take, which `folders` decides
    write: Callable[..., list[Path]] = write_folder_layout if folders else write_c_layout
    with CorruptionPool(args.workers or default_workers()) as pool:
        paths = write(base, args.out, names, parameters=args.parameters or suite.parameters, seed=args.seed, n=args.n,
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


COMMAND = Command("corrupt", help="write a corrupted copy of a split in the published layout (CIFAR-10-C's arrays; "
                            "ImageNet-C's JPEG folders for imagenet)",
                  epilog="""examples:
  robustlab corrupt --dataset cifar10 --data-dir D --out cifar10-c
  robustlab corrupt --dataset digits --out digits-c --corruptions gaussian_noise,fog --seed 1
  torchrun --nnodes 4 --nproc-per-node 1 ... -m robustlab corrupt --dataset imagenet --data-dir D --out shared/in-c
      (each rank corrupts every world-th batch: ImageNet-C's files; for arrays its own part, which the rank
       finishing a corruption's last part assembles)""",
                  arguments=arguments, run=run)
