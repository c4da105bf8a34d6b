"""The typed configuration of each command that runs something: built once from the parsed arguments (or in
Python), validated at the boundary, and stored in the manifest as it is."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from robustlab.adaptive.calibration import check_levels
from robustlab.attacks.spec import AttackSpec
from robustlab.errors import RobustlabError
from robustlab.files import check_output_folder
from robustlab.models.csc import MAX_LAMBDA

MAX_SEED = 2 ** 32  # numpy and the attack libraries take seeds in [0, 2**32)
DEFAULT_SELECT_N = 1000  # per-set selection's default sample; its bounds (lambda_low..high) say whether it sufficed
ALL_IMAGES = "all"  # --select-n all: per-set selection on every image, the exact rule


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise RobustlabError(f"--seed {seed!r} is outside 0..{MAX_SEED - 1}; pick a seed in that range")


def check_lambda(value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_LAMBDA):
        raise RobustlabError(f"--lambda {value!r} must be a finite number >= 0 (at most {MAX_LAMBDA:g}); pass one "
                             "such as 0.1 (the usual training value)")


def comma_list(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


@dataclass(frozen=True)
class CalibrateConfig:
    """Everything `robustlab calibrate` (and the demo's calibration) runs with."""
    ckpt: str
    dataset: str
    out: str
    arch: str | None = None
    official_config: str | None = None
    data_dir: str | None = None
    split: str = "train"
    noise: str = "gaussian"
    levels: tuple[float, ...] | str | None = None  # numbers, or a suite that lists them
    lambdas: str = "default"
    layer: int = 0
    n: int = 500
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    quiet: bool = False
    figure: str | None = None  # the figure's stem (default: beside out)
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if isinstance(self.levels, tuple):
            check_levels(self.noise, self.levels)

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> CalibrateConfig:
        levels = tuple(args.levels) if isinstance(args.levels, list) else args.levels
        return cls(ckpt=args.ckpt, dataset=args.dataset, out=args.out, arch=args.arch,
                   official_config=args.official_config, data_dir=args.data_dir, split=args.split, noise=args.noise,
                   levels=levels, lambdas=args.lambdas, layer=args.layer, n=args.n, seed=args.seed,
                   batch_size=args.batch_size, device=args.device, quiet=args.quiet, overwrite=args.overwrite)


def attack_specs(suite: str | None, attack: str | None, *, eps: Sequence[str | float] = (), norm: str | None = None,
                 steps: int | None = None, alpha: str | float | None = None, restarts: int = 1,
                 queries: int | None = None, transfer_from: Sequence[str] = ()) -> list[AttackSpec]:
    """--attacks SUITE and/or --attack NAME --eps E[,E...] (an eps sweep) [--steps --queries --alpha --restarts
    --norm]: the attacks of a run."""
    from robustlab.attacks import load_attack_suite, make_spec  # the adapters' libraries load only when asked
    specs = list(load_attack_suite(suite)) if suite else []
    if attack:
        if not eps:
            raise RobustlabError(f"--attack {attack} needs --eps (e.g. --eps 8/255, or a sweep 2/255,4/255,8/255)")
        specs += [make_spec(attack, eps=e, norm=norm, steps=steps, alpha=alpha, restarts=restarts, queries=queries)
                  for e in eps]
    elif eps or transfer_from:
        raise RobustlabError("--eps and --transfer-from need --attack NAME (see robustlab list attacks)")
    return specs


@dataclass(frozen=True)
class EvalConfig:
    """Everything `robustlab eval` (and the demo) runs with; `to_manifest()` is what the run directory records."""
    ckpts: tuple[str, ...]
    dataset: str
    data_dir: str | None = None
    arch: str | None = None
    official_config: str | None = None
    n: int | None = None
    batch_size: int = 256
    device: str = "auto"
    out: str | None = None
    seed: int = 0
    corruptions: str | None = None
    severities: tuple[int, ...] | None = None
    c_dir: str | None = None
    lmbda: float | None = None
    adaptive: str | None = None  # a calibration JSON: add Algorithm 1's rows
    per_image: bool = False
    select_n: int | str | None = None  # --select-n as given: a sample size, ALL_IMAGES, or None (DEFAULT_SELECT_N)
    lambda_sweep: str | None = None
    workers: int | None = None  # processes generating corruptions (None: 1 with the model on the CPU, else the cores)
    attacks: tuple[AttackSpec, ...] = ()
    transfer_from: tuple[str, ...] = ()
    diagnostics: bool = True
    cascade: bool = False  # the worst-case mode (robustlab.cascade)
    save_adv: bool = False
    allow_config_change: bool = False
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # the command's other arguments, recorded only

    def __post_init__(self) -> None:
        if not self.ckpts:
            raise RobustlabError("--ckpt names no checkpoint; give a file, zoo:NAME or robustbench:NAME")
        check_seed(self.seed)
        check_lambda(self.lmbda)
        if self.cascade and not self.attacks:
            raise RobustlabError("--cascade orders and skips attacks, and this run has none; add --attack or "
                                 "--attacks, or drop --cascade")
        if self.out is not None and not str(self.out).strip():
            raise RobustlabError("--out is empty; pass the directory to write into (e.g. --out runs/mine)")
        if self.save_adv and self.out is not None:  # a resumed run: its adversarial/ is written into again
            out = Path(self.out)
            check_output_folder(out / "adversarial", root=out, what="--out", suffixes=(".npz",))

    @classmethod
    def from_cli(cls, args: argparse.Namespace, attacks: tuple[AttackSpec, ...]) -> EvalConfig:
        return cls(ckpts=comma_list(args.ckpt), dataset=args.dataset, data_dir=args.data_dir, arch=args.arch,
                   official_config=args.official_config, n=args.n, batch_size=args.batch_size, device=args.device,
                   out=args.out, seed=args.seed, corruptions=args.corruptions,
                   severities=tuple(args.severities) if args.severities else None, c_dir=args.c_dir,
                   lmbda=args.lmbda, adaptive=args.adaptive_lambda, per_image=args.per_image,
                   select_n=args.select_n, lambda_sweep=args.lambda_sweep, workers=args.workers, attacks=attacks,
                   transfer_from=comma_list(args.transfer_from), diagnostics=not args.skip_diagnostics,
                   cascade=args.cascade, save_adv=args.save_adv, allow_config_change=args.allow_config_change,
                   quiet=args.quiet, extra={"json": args.json})

    def to_manifest(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(out.pop("extra"))
        return json.loads(json.dumps(out, default=str))  # as the manifest holds it (lists, not tuples)
