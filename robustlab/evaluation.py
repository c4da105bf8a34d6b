"""One evaluation run: load data and models, build the cells, run them into a run directory."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from robustlab.adaptive import load_calibration, parse_grid
from robustlab.cascade import cascade_order
from robustlab.cells import Cell, LambdaSetting, ModelPlan, check_compatible
from robustlab.checkpoints import load_model, model_digest, nonfinite_warning
from robustlab.config import ALL_IMAGES, DEFAULT_SELECT_N, EvalConfig
from robustlab.corruptions.engine import reencode_quality
from robustlab.corruptions.parameters import default_parameters
from robustlab.corruptions.pool import CorruptionPool, default_workers
from robustlab.corruptions.suites import CorruptionSuite, load_corruption_suite, suite_from_names
from robustlab.counting import BatchLimit, RunInfo
from robustlab.data import DATASETS, ImageSet, load_dataset
from robustlab.data.corrupted import GeneratedImageSet, content_digest, load_cifar_c, load_imagenet_c
from robustlab.device import resolve_device
from robustlab.distributed import init_from_env
from robustlab.errors import RobustlabError, write_error
from robustlab.models import RobustModel, csc_layers
from robustlab.progress import progress_bars
from robustlab.rundir import RunDir, default_run_dir
from robustlab.runner import run_cells
from robustlab.schema import LambdaMode, Record
from robustlab.suites import suite_names


def default_cache_dir() -> Path:
    """Where generated corruptions are cached: $ROBUSTLAB_CACHE, else (unset or empty) ~/.cache/robustlab."""
    return Path(os.environ.get("ROBUSTLAB_CACHE") or Path.home() / ".cache" / "robustlab") / "corruptions"


def corruption_suite(spec: str, *, dataset: str, severities: Sequence[int] | None) -> CorruptionSuite:
    """`--corruptions`: a suite name or file, else a comma list of corruption names."""
    if Path(spec).suffix != ".toml" and spec not in suite_names("corruptions"):
        return suite_from_names(spec, list(severities or [1, 2, 3, 4, 5]), default_parameters(dataset))
    suite = load_corruption_suite(spec)
    if severities:
        cells = tuple(c for c in suite.cells if c.param is not None or c.severity in severities)
        suite = CorruptionSuite(suite.name, suite.description, suite.parameters, cells)
    return suite


def cell_source(base: ImageSet, dataset: str, *, parameters: str, seed: int, c_dir: str | None, cache_dir: Path | None,
                device: Any, log: Callable[[str], None] = lambda _: None, reencode: bool | None = None,
                pool: CorruptionPool | None = None,
                digests: dict[int, str] | None = None) -> Callable[[Cell], ImageSet]:
    """Images of a cell: the clean split, the published corrupted files (c_dir), or generated ones. `digests`:
    the clean split's content digest per image count, shared by every generated cell (hashed once per run)."""
    digests = {} if digests is None else digests

    def images(cell: Cell) -> ImageSet:
        if cell.corruption == "none":
            return base
        if c_dir is None:
            return GeneratedImageSet(base, cell.corruption, cell.severity, parameters=parameters, seed=seed,
                                     param=cell.param, cache_dir=cache_dir, device=device, log=log, reencode=reencode,
                                     digests=digests, pool=pool)
        if cell.param is not None:
            raise RobustlabError(f"{cell.corruption} level {cell.param} comes from a suite's own levels, which no "
                                 "published file holds; drop --c-dir to generate it")
        if dataset == "imagenet":
            return load_imagenet_c(c_dir, cell.corruption, cell.severity)
        # CIFAR-10/100-C, and the same layout that `robustlab corrupt` writes for any other dataset
        return load_cifar_c(c_dir, cell.corruption, cell.severity, name=dataset, num_classes=base.num_classes)
    return images


def image_set_fingerprint(data: ImageSet, n: int, digests: dict[int, str]) -> str:
    """The clean images and labels a run evaluates (the first n, in order): their content digest, so that two runs
    are paired only when they saw the same images (hashed once per run, shared with the generated cells' cache)."""
    if n not in digests:
        digests[n] = content_digest(data, n)
    return f"{data.name}/{data.split}/first-{n}/{digests[n][:16]}"


def lambda_plans(models: Sequence[RobustModel], *, lmbda: float | None, adaptive: str | None,
                 per_image: bool, lambda_sweep: str | None, select_n: int | str | None = None) -> list[ModelPlan]:
    """Which lambda settings each model is evaluated under; lambda options on a model without CSC are refused.
    `select_n`: the option --select-n (a sample size, "all" for the exact rule, None: not given, DEFAULT_SELECT_N),
    resolved into each setting's `sample_size` (None: every image)."""
    asked = lmbda is not None or adaptive is not None or lambda_sweep is not None
    if select_n is not None and (adaptive is None or per_image):
        raise RobustlabError("--select-n applies to per-set selection only; add --adaptive-lambda, drop --per-image")
    calib = load_calibration(adaptive) if adaptive is not None else None
    plans = []
    matched = False
    for model in models:
        sha = model_digest(model)
        layers = csc_layers(model)
        if not layers:
            if asked and len(models) == 1:
                raise RobustlabError(f"{model.name} ({model.config.arch}) has no CSC layer: --lambda, "
                                     "--adaptive-lambda and --lambda-sweep apply to SDNet models only")
            plans.append(ModelPlan(model, sha, [LambdaSetting(LambdaMode.NOT_APPLICABLE)]))
            continue
        if lambda_sweep is not None:
            train_lambda = float(layers[0].lmbda)
            settings = [LambdaSetting(LambdaMode.FIXED, v) for v in parse_grid(lambda_sweep, train_lambda)]
        else:
            settings = [LambdaSetting(LambdaMode.FIXED, lmbda)]
        if calib is not None and calib.checkpoint_sha256 == sha:
            matched = True
            mode = LambdaMode.ADAPTIVE_IMAGE if per_image else LambdaMode.ADAPTIVE_SET
            sample = DEFAULT_SELECT_N if select_n is None else None if select_n == ALL_IMAGES else int(select_n)
            settings.append(LambdaSetting(mode, calibration=calib, sample_size=None if per_image else sample))
        plans.append(ModelPlan(model, sha, settings))
    if adaptive is not None and not matched:
        load_calibration(adaptive, sha256=plans[0].sha256)  # raises: calibrated for another checkpoint
    return plans


def run_cells_of(suite: CorruptionSuite | None, cfg: EvalConfig, sources: dict[str, RobustModel]) -> list[Cell]:
    """The cells of a run in the order they run: clean, the suite's corruptions, then the attacks (in the worst-case
    mode by eps and cost)."""
    cells = [Cell()] + [Cell(c.corruption, c.severity, c.param) for c in (suite.cells if suite else ())]
    # with --transfer-from the target's own white-box rows come too: a transfer number means little without them
    cells += [Cell(attack=spec, source=name) for name in ["", *sources] for spec in cfg.attacks]
    return cascade_order(cells) if cfg.cascade else cells


def transfer_sources(ckpts: Sequence[str], device: torch.device) -> dict[str, RobustModel]:
    """The transfer source models by name; two sources of the same name are refused (their rows would merge)."""
    sources: dict[str, RobustModel] = {}
    for ckpt in ckpts:
        model = load_model(ckpt, device=device)
        if model.name in sources:
            raise RobustlabError(f"--transfer-from names two models {model.name!r} "
                                 f"({sources[model.name].checkpoint_path} and {model.checkpoint_path}); "
                                 "copy one to a file of another name")
        sources[model.name] = model
    return sources


def evaluate(config: EvalConfig, models: Sequence[RobustModel] | None = None) -> tuple[RunDir | None, list[Record]]:
    """Evaluate every checkpoint on clean data (and its corruptions and attacks); bad input is refused before
    anything is written. `models`: models built in Python, evaluated instead of loading `config.ckpts` (which then
    only name them in the manifest).

    An `out` that holds an unfinished (or finished) run with the same configuration is resumed: only the cells not
    in its results.csv run. Under torchrun every rank evaluates its share and only rank 0 writes (and gets the
    RunDir; the other ranks get None)."""
    with contextlib.ExitStack() as stack:  # the corruption workers stop when the run ends, however it ends
        return _evaluate(config, stack, models)


def _evaluate(cfg: EvalConfig, stack: contextlib.ExitStack, given: Sequence[RobustModel] | None
              ) -> tuple[RunDir | None, list[Record]]:
    shard, device = init_from_env(cfg.device)
    dev = resolve_device(device)
    if cfg.save_adv and shard.world > 1:
        raise RobustlabError("--save-adv writes every adversarial image from one process; run it without torchrun")
    DATASETS.get(cfg.dataset)
    suite = corruption_suite(cfg.corruptions, dataset=cfg.dataset, severities=cfg.severities) \
        if cfg.corruptions else None
    data = load_dataset(cfg.dataset, cfg.data_dir)
    notes: list[str] = [data.notice] if data.notice else []
    models = [m.to(dev) for m in given] if given is not None else \
        [load_model(c, arch=cfg.arch, device=dev, official_config=cfg.official_config) for c in cfg.ckpts]
    sources = transfer_sources(cfg.transfer_from, dev)
    for model in [*models, *sources.values()]:
        check_compatible(model, data)
        notes += [line for line in (nonfinite_warning(model, "images with non-finite logits count as wrong"),
                                    model.csc_settings and model.csc_settings.notice(model.name)) if line]
    cells = run_cells_of(suite, cfg, sources)
    run: RunDir | None = None

    def log(message: str) -> None:
        if shard.main:
            print(f"robustlab: {message}", file=sys.stderr)
            if run is not None:
                run.warn(message)

    # a model on the CPU keeps its cores busy: generating beside it only competes (bench/README.md); on a GPU the
    # cores are free for it
    pool = stack.enter_context(CorruptionPool(cfg.workers or (default_workers() if dev.type == "cuda" else 1)))
    digests: dict[int, str] = {}
    source = cell_source(data, cfg.dataset, parameters=suite.parameters if suite else "cifar", seed=cfg.seed,
                         c_dir=cfg.c_dir, cache_dir=default_cache_dir(), device=dev, log=log,
                         reencode=suite.reencode if suite else None, pool=pool, digests=digests)
    plans = lambda_plans(models, lmbda=cfg.lmbda, adaptive=cfg.adaptive, per_image=cfg.per_image,
                         lambda_sweep=cfg.lambda_sweep, select_n=cfg.select_n)
    if cfg.c_dir is not None:
        for cell in cells:  # every published file must be there before anything is written
            check_compatible(models[0], source(cell))
    label = f"{models[0].name}-{cfg.dataset}" if len(models) == 1 else cfg.dataset
    for folder, what in ((cfg.data_dir, "--data-dir"), (cfg.c_dir, "--c-dir")):
        if cfg.out is not None and folder is not None and _inside(Path(cfg.out), Path(folder)):
            raise RobustlabError(f"--out {cfg.out} lies inside {what} {folder}; write the run elsewhere (pass another "
                                 "--out), so that the data stay as they are")
    out = Path(cfg.out) if cfg.out is not None else shard.broadcast(default_run_dir(label))  # one name on all ranks
    run = RunDir(out, arguments=cfg.to_manifest(), device=dev, allow_config_change=cfg.allow_config_change) \
        if shard.main else None
    for note in notes:
        log(note)
    info = RunInfo(seed=cfg.seed, batch_size=cfg.batch_size, device=dev, n=cfg.n, diagnostics=cfg.diagnostics,
                   shard=shard, save_adv=out / "adversarial" if cfg.save_adv else None, limit=BatchLimit(log),
                   cascade=cfg.cascade)
    if run is None:
        return None, run_cells(plans, cells, source, info, None, progress_bars(True), sources=sources)
    try:
        # rank 0 alone writes rows, so it alone fingerprints the images (a bad image fails the run here, recorded)
        total = len(data) if cfg.n is None else min(cfg.n, len(data))
        info = dataclasses.replace(info, image_set=image_set_fingerprint(data, total, digests))
        _describe(run, plans, suite, cfg, sources, shard.world)
        records = run_cells(plans, cells, source, info, run.store, progress_bars(cfg.quiet), sources=sources,
                            log=log)
    except KeyboardInterrupt:
        run.finish("interrupted")
        raise
    except BaseException as e:  # every failure midway is recorded: the manifest never stays "running"
        error = e if isinstance(e, RobustlabError) else write_error(e) if isinstance(e, OSError) else None
        why = str(error) if error is not None else f"{type(e).__name__}: {_first_line(e)}"
        with contextlib.suppress(RobustlabError):  # on a full disk the manifest may not save: report the cause
            run.finish(f"failed: {why}")
        if error is None:
            raise
        raise error from None
    run.finish()
    return run, records


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _describe(run: RunDir, plans: Sequence[ModelPlan], suite: CorruptionSuite | None, cfg: EvalConfig,
              sources: dict[str, RobustModel], ranks: int) -> None:
    """What the manifest says about the run beyond its configuration: suite levels, models, calibration, attacks."""
    if suite is not None:
        run.describe("corruption_suite", {
            "name": suite.name, "parameters": suite.parameters, "description": suite.description,
            "jpeg_reencode_quality": reencode_quality(suite.parameters, suite.reencode),
            "levels": {f"{c.corruption}-{c.severity}": c.param for c in suite.cells if c.param is not None}})
    for plan in plans:
        settings = plan.model.csc_settings
        path = plan.model.checkpoint_path
        run.add_model(plan.model.name, {"checkpoint": str(path) if path else "built in Python", "sha256": plan.sha256,
                                        "config": plan.model.config.to_dict(),
                                        **({"csc_settings": settings.to_dict()} if settings else {})})
    if cfg.adaptive:
        run.describe("calibration", {"file": str(cfg.adaptive), "per_image": cfg.per_image,
                                     "select_n": cfg.select_n})
    if cfg.attacks:
        run.describe("attacks", [dataclasses.asdict(spec) for spec in cfg.attacks])
        run.describe("transfer_from", {name: str(m.checkpoint_path) for name, m in sources.items()})
    run.describe("ranks", ranks)
