"""What a run evaluates: its cells (clean, a corruption at a severity, an attack), each model's lambda settings,
and the record a counted cell becomes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from robustlab.attacks import AttackSpec
from robustlab.counting import Counts, RunInfo
from robustlab.data import ImageSet
from robustlab.errors import RobustlabError
from robustlab.models import RobustModel, csc_layers
from robustlab.schema import NONE, LambdaMode, Record, wilson_interval
from robustlab.version import __version__

if TYPE_CHECKING:
    from robustlab.adaptive import Calibration, SetSelection


def check_compatible(model: RobustModel, data: ImageSet) -> None:
    cfg = model.config
    if cfg.num_classes != data.num_classes:
        raise RobustlabError(f"model {model.name} predicts {cfg.num_classes} classes but {data.name} has "
                             f"{data.num_classes}; pick the checkpoint trained on {data.name} or the right --dataset")
    if data.image_size != (cfg.input_size, cfg.input_size):
        h, w = data.image_size
        raise RobustlabError(f"model {model.name} expects {cfg.input_size}x{cfg.input_size} images but {data.name} "
                             f"has {h}x{w}; pick a model trained at that size or the right --dataset")


@dataclass(frozen=True)
class Cell:
    """One evaluation condition: clean data, a corruption at a severity (param: a suite's own level), or an
    attack (an AttackSpec) on clean data, crafted on the model itself or on a `source` model (transfer)."""
    corruption: str = NONE
    severity: int = 0
    param: float | None = None
    attack: AttackSpec | None = None
    source: str = ""


@dataclass(frozen=True)
class LambdaSetting:
    """How a CSC model's lambda is set for a row: the model's own or a fixed value ('fixed'), or chosen by
    Algorithm 1 from a calibration ('adaptive-set' per test set, 'adaptive-image' per image); 'n.a.' without CSC.
    `sample_size`: per test set, select on a seeded sample of that many of its images (None: on all of them, the
    exact rule); the option `--select-n` resolved."""
    mode: LambdaMode = LambdaMode.FIXED
    value: float | None = None
    calibration: Calibration | None = field(default=None, compare=False)
    sample_size: int | None = None

    def required_calibration(self) -> Calibration:
        """The calibration an adaptive setting selects with."""
        if self.calibration is None:
            raise RobustlabError(f"lambda mode {self.mode} needs a calibration; pass --adaptive-lambda FILE.json")
        return self.calibration


@dataclass
class ModelPlan:
    model: RobustModel
    sha256: str
    settings: list[LambdaSetting]


def identity_fields(model: RobustModel, sha: str, data: ImageSet, cell: Cell, setting: LambdaSetting, *, n: int,
                    seed: int, lmbda: float, batch_size: int) -> dict[str, Any]:
    """The Record fields that say what a cell measures (results.IDENTITY), known before it runs."""
    spec = cell.attack
    return dict(
        model=model.name, arch=model.config.arch, checkpoint_sha256=sha, dataset=data.name, split=data.split,
        corruption=cell.corruption, severity=cell.severity, attack=spec.name if spec else NONE,
        attack_source=cell.source, norm=spec.norm if spec else NONE, eps=spec.eps if spec else math.nan,
        steps=spec.steps if spec else 0, queries=spec.queries if spec else 0,
        alpha=spec.alpha if spec and spec.alpha is not None else math.nan, restarts=spec.restarts if spec else 0,
        attack_config=spec.config if spec else "", batch_size=batch_size if spec else 0, lambda_mode=str(setting.mode),
        lmbda=lmbda, n=n, seed=seed)


def make_record(model: RobustModel, sha: str, data: ImageSet, cell: Cell, setting: LambdaSetting, counts: Counts,
                info: RunInfo, lmbda: float, flags: Sequence[str] = (), flags_model: str = "",
                selection: SetSelection | None = None) -> Record:
    lo, hi = wilson_interval(counts.correct, counts.n)
    return Record(
        **identity_fields(model, sha, data, cell, setting, n=counts.n, seed=info.seed, lmbda=lmbda,
                          batch_size=info.batch_size),
        lambda_std=counts.lambda_std, lambda_low=selection.low if selection else math.nan,
        lambda_high=selection.high if selection else math.nan, correct=counts.correct,
        accuracy=counts.correct / counts.n, ci_low=lo, ci_high=hi,
        top5_correct=math.nan if counts.top5_correct is None else counts.top5_correct,
        top5_accuracy=math.nan if counts.top5_correct is None else counts.top5_correct / counts.n,
        residual_mean=counts.residual_mean, flags=";".join(flags), flags_model=flags_model, seconds=counts.seconds,
        robustlab_version=__version__, image_set=info.image_set)


def fixed_lambda(model: RobustModel, setting: LambdaSetting) -> float:
    """The lambda a 'fixed' setting runs the first CSC layer at: its value, else the model's own."""
    return float(setting.value if setting.value is not None else csc_layers(model)[0].lmbda)


def adv_file_name(model: RobustModel, attack: AttackSpec, source: str, setting: LambdaSetting) -> str:
    src = f"-from-{source}" if source else ""
    return f"{model.name}-{setting.mode}-{attack.name}-{attack.norm}-eps{attack.eps:.6f}{src}.npz"
