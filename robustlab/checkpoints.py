"""Checkpoints: safe loading, format detection, official-key remapping, architecture inference, saving."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from robustlab.errors import RobustlabError
from robustlab.files import write_atomic
from robustlab.models import ARCHS, ModelConfig, RobustModel, build_net
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from robustlab.models.sdnet import CSC_DEFAULTS
from robustlab.official_config import CscSettings, OfficialConfig, beside, read_official_config

FORMAT = "robustlab"
FORMAT_VERSION = 1
ZOO_PREFIX = "zoo:"
ROBUSTBENCH_DIR_ENV = "ROBUSTLAB_ROBUSTBENCH_DIR"  # where RobustBench's model files lie (default ./models)
_ZOO_PACKAGE = "robustlab.zoo"


def zoo_names() -> list[str]:
    """Names of the checkpoints shipped inside the package (`zoo:NAME`)."""
    return sorted(p.name[:-3] for p in resources.files(_ZOO_PACKAGE).iterdir() if p.name.endswith(".pt"))


def resolve_path(ckpt: str | os.PathLike) -> Path:
    """The file behind a checkpoint argument: a path, or `zoo:NAME` for a shipped checkpoint."""
    text = str(ckpt)
    if text.startswith(ZOO_PREFIX):
        name = text[len(ZOO_PREFIX):]
        if name not in zoo_names():
            raise RobustlabError(f"unknown zoo checkpoint {name!r}; shipped: {', '.join(zoo_names()) or 'none'}")
        return Path(str(resources.files(_ZOO_PACKAGE).joinpath(f"{name}.pt")))
    path = Path(text).expanduser()
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise RobustlabError(f"checkpoint {text} {what}; give a checkpoint file or a zoo name "
                             f"({', '.join(ZOO_PREFIX + n for n in zoo_names())})")
    try:
        text.encode("utf-8")  # the model is named after the file, and results.csv is UTF-8
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise RobustlabError(f"checkpoint {shown}: the file name is not valid UTF-8; copy the file to a UTF-8 name "
                             "and pass that") from None
    return path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_digest(model: RobustModel) -> str:
    """The identity of a model's weights: its checkpoint file's sha256, or for a model built in Python the sha256
    of its parameters and buffers (names, dtypes, shapes and bytes, in state_dict order)."""
    if model.checkpoint_path is not None:
        return sha256_file(model.checkpoint_path)
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}\x1f{t.dtype}\x1f{tuple(t.shape)}\x1e".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True, turning every failure into a one-line RobustlabError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = pickled_globals(path)
        if names:
            raise RobustlabError(
                f"refusing to load {path}: it pickles {', '.join(names[:3])}, which could run code; if you trust "
                "its source, re-save just its state_dict (tensors) with torch.save") from None
        raise RobustlabError(f"{path} is not a PyTorch checkpoint ({_first_line(e)}); check the file") from None
    except Exception as e:  # torch's unpickler fails on garbage with whatever error its parser hits first
        raise RobustlabError(f"{path} is truncated or not a PyTorch checkpoint ({_first_line(e)}); "
                             "download or copy it again") from None


def pickled_globals(path: str | os.PathLike) -> list[str]:
    """The callables a pickle (or a torch zip's data.pkl) names beyond torch's own; [] if it does not parse."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            data = Path(path).read_bytes()
        strings: list[str] = []
        names = []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle at all
        return []
    return sorted({n for n in names if not n.startswith(("torch.", "collections.OrderedDict"))})


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def official_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a plain state_dict or a dict with 'state_dict', keys without 'module.' and in our layout."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RobustlabError(f"{path} holds no state_dict (expected a dict of tensors, or a dict with 'state_dict')")
    out = {}
    for key, value in sd.items():
        key = key[len("module."):] if key.startswith("module.") else key
        # official "-all" models nest each stage's blocks in `.layers`; ours are plain Sequentials
        out[re.sub(r"^(layer[1-4])\.layers\.", r"\1.", key)] = value
    return out


def infer_config(sd: dict[str, torch.Tensor]) -> ModelConfig | None:
    """Recognize an official SDNet / ResNet state_dict; None when the keys fit neither."""
    stem_key = next((k for k in ("layer0.0.dn.weight", "layer0.0.weight") if k in sd), None)
    if stem_key is None or "linear.weight" not in sd:
        return None
    sparse = stem_key.endswith(".dn.weight")
    stem_w = sd[stem_key]
    blocks = [len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    depth = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}.get(tuple(blocks))
    if depth is None:
        return None
    imagenet = stem_w.shape[-1] == 7
    num_classes = int(sd["linear.weight"].shape[0])
    kwargs: dict[str, Any] = {"stem": "imagenet" if imagenet else "cifar", "width": stem_w.shape[0] / 64}
    if sparse:
        all_layers = "layer1.0.conv1.dn.weight" in sd
        shortcut = any(".shortcut." in k for k in sd)
        arch = f"sdnet{depth}" + ("-all" if all_layers else "") + ("" if shortcut or not all_layers else "-noshortcut")
        n_dict = stem_w.shape[1] // 3
        if n_dict != 1:
            kwargs["n_dict"] = n_dict
    else:
        arch = f"resnet{depth}"
    dataset = "imagenet" if imagenet else {10: "cifar10", 100: "cifar100"}.get(num_classes)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (CIFAR_MEAN, CIFAR_STD)
    return ModelConfig(arch=arch, num_classes=num_classes, input_size=224 if imagenet else 32, mean=mean, std=std,
                       dataset=dataset, arch_kwargs=kwargs)


def _load_weights(net: nn.Module, sd: dict[str, torch.Tensor], arch: str, guess: ModelConfig | None) -> None:
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if own[k].numel() != sd[k].numel())
    if not (missing or unexpected or shapes):
        net.load_state_dict(sd)
        return
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if keys:
            parts.append(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
    hint = f"its keys fit --arch {guess.arch}: pass that, or no --arch" if guess and guess.arch != arch else \
        f"pass the --arch it was trained as (known: {', '.join(ARCHS)})"
    raise RobustlabError(f"checkpoint does not fit arch {arch}: {'; '.join(parts)}; {hint}")


def is_robustlab_format(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def model_from_checkpoint(obj: Any, path: str | os.PathLike, arch: str | None = None,
                          official: OfficialConfig | None = None) -> RobustModel:
    """Build the model a loaded checkpoint object describes (robustlab format or official state_dict); `official`
    is the official experiment configuration of an official checkpoint (its CSC settings)."""
    robustlab_format = is_robustlab_format(obj)
    if robustlab_format:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise RobustlabError(f"{path} has checkpoint format {obj['format_version']}, newer than this "
                                 f"robustlab reads ({FORMAT_VERSION}); upgrade robustlab")
        if official is not None:
            raise RobustlabError(f"{path} is in robustlab's format, which records its own settings; drop "
                                 f"--official-config {official.path} (it is for official SDNet checkpoints)")
        config = ModelConfig.from_dict(obj["config"])
        sd, guess = obj["state_dict"], config
        if arch and arch != config.arch:
            config = ModelConfig(**{**config.__dict__, "arch": arch})
    else:
        sd = official_state_dict(obj, path)
        guess = infer_config(sd)
        if guess is None and arch is None:
            raise RobustlabError(f"cannot tell the architecture of {path} from its keys "
                                 f"(first: {', '.join(list(sd)[:3])}); pass --arch (known: {', '.join(ARCHS)})")
        config = guess if arch is None else ModelConfig(
            **{**(guess.__dict__ if guess else _default_config(arch, sd).__dict__), "arch": arch})
        if official is not None:
            _check_official(official, config, path)
    config, settings = _with_csc_settings(config, official, robustlab_format)
    net = build_net(config)
    _load_weights(net, sd, config.arch, guess)
    model = RobustModel(net, config)
    model.csc_settings = settings
    return model


def _check_official(official: OfficialConfig, config: ModelConfig, path: str | os.PathLike) -> None:
    """Refuse an official configuration that describes another network than the checkpoint's keys."""
    said = official.arch()
    conflicts = []
    if said is not None and said != config.arch:
        conflicts.append(f"MODEL.NAME {official.name} (arch {said}) but the keys are arch {config.arch}")
    if official.num_classes is not None and official.num_classes != config.num_classes:
        conflicts.append(f"MODEL.NUM_CLASSES {official.num_classes} but the keys have {config.num_classes} classes")
    n_dict = config.arch_kwargs.get("n_dict", 1)
    if official.expansion is not None and ARCHS.get(config.arch).family == "sdnet" and official.expansion != n_dict:
        conflicts.append(f"MODEL.EXPANSION_FACTOR {official.expansion} but the keys have n_dict {n_dict}")
    if conflicts:
        raise RobustlabError(f"official config {official.path} does not fit {path}: {'; '.join(conflicts)}; give "
                             "the configuration the checkpoint was trained with")


def _with_csc_settings(config: ModelConfig, official: OfficialConfig | None,
                       robustlab_format: bool) -> tuple[ModelConfig, CscSettings | None]:
    """The config with every hidden CSC setting explicit, and where they came from (None for non-SDNet archs).

    robustlab's own checkpoints were built with CSC_DEFAULTS wherever they do not record a value, and an official
    configuration that omits a key trained with the official default, so only an official checkpoint without a
    configuration has assumed values."""
    if ":" in config.arch or ARCHS.get(config.arch).family != "sdnet":
        return config, None
    given = {k: v for k, v in config.arch_kwargs.items() if k in CSC_DEFAULTS}
    if robustlab_format:
        settings = CscSettings("checkpoint")
    elif official is not None:
        given.update(official.hidden)
        settings = CscSettings(f"official config {official.path}")
    else:
        settings = CscSettings("defaults", assumed={k: v for k, v in CSC_DEFAULTS.items() if k not in given})
    kwargs = {**config.arch_kwargs, **CSC_DEFAULTS, **given}
    return ModelConfig(**{**config.__dict__, "arch_kwargs": kwargs}), settings


def _default_config(arch: str, sd: dict[str, torch.Tensor]) -> ModelConfig:
    """A config for a state_dict of an unrecognized layout: classes from the last 2-d weight, CIFAR input."""
    last = [v for v in sd.values() if v.dim() == 2]
    num_classes = int(last[-1].shape[0]) if last else 1000
    return ModelConfig(arch=arch, num_classes=num_classes, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)


@torch.inference_mode(False)  # loaded inside inference mode, its weights would be inference tensors: no versions
def load_model(ckpt: str | os.PathLike, arch: str | None = None, device: str | torch.device = "cpu",
               official_config: str | os.PathLike | None = None) -> RobustModel:
    """Load a checkpoint (path or zoo name) as a pixel-space [0, 1] -> logits model in eval mode.

    An official SDNet checkpoint takes its CSC settings from `official_config`, else from a YAML file of its stem
    beside it, else the official defaults (recorded in `model.csc_settings`).

        >>> model = robustlab.load_model("zoo:sdnet18-fashion")
        >>> model = robustlab.load_model("sdnet18/model_best.pth.tar", device="cuda")
    """
    text = str(ckpt)
    if text.startswith("robustbench:"):
        if official_config is not None:
            raise RobustlabError(f"--official-config is for official SDNet checkpoints, not {text}; drop it")
        model = load_robustbench(text[len("robustbench:"):])
    else:
        path = resolve_path(ckpt)
        obj = read_checkpoint(path)
        found = Path(official_config) if official_config is not None else None
        if found is None and not is_robustlab_format(obj):
            found = beside(path)
        model = model_from_checkpoint(obj, path, arch, read_official_config(found) if found else None)
        model.name = text[len(ZOO_PREFIX):] if text.startswith(ZOO_PREFIX) else path.stem.split(".")[0]
        model.checkpoint_path = path
    return model.to(device).eval()


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the model's weights and buffers that hold NaN or inf."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def nonfinite_warning(model: RobustModel, consequence: str) -> str | None:
    """A warning naming the weights that hold NaN or inf, what follows from it and the fix (None when all are
    finite)."""
    damaged = nonfinite_tensors(model)
    if not damaged:
        return None
    count = f"{len(damaged)} tensors hold" if len(damaged) > 1 else "1 tensor holds"
    return (f"warning: {model.name}: {count} NaN or inf ({', '.join(damaged[:3])}{' ...' if len(damaged) > 3 else ''}"
            f"); {consequence}; retrain or copy the checkpoint again")


def save_checkpoint(model: RobustModel, path: str | os.PathLike, **extra: Any) -> None:
    """Save in robustlab's format: config (arch, normalization, lambda, ...), format version, weights.

        >>> robustlab.save_checkpoint(robustlab.load_model("zoo:sdnet18-digits"), "sdnet.pt")
    """
    from robustlab.models.csc import Dictionary
    if not all(d.is_current() for d in model.modules() if isinstance(d, Dictionary)):
        # the stored CSC step sizes must belong to these weights (loading trusts them): compute them at the
        # model's input size with one forward
        size = model.config.input_size
        training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(1, len(model.config.mean), size, size, device=next(model.parameters()).device))
        model.train(training)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()}, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def load_robustbench(spec: str) -> RobustModel:
    """`[DATASET/THREAT/]NAME` from RobustBench's local model directory (never downloaded here)."""
    from robustlab.compat import patch_third_party
    patch_third_party()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    parts = spec.split("/")
    if len(parts) not in (1, 3):
        raise RobustlabError(f"robustbench:{spec}: write robustbench:NAME (cifar10, Linf) or "
                             "robustbench:DATASET/THREAT/NAME")
    dataset, threat, name = parts if len(parts) == 3 else ("cifar10", "Linf", parts[0])
    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    except (ValueError, KeyError):
        raise RobustlabError(f"robustbench:{spec}: unknown dataset/threat {dataset}/{threat}; datasets "
                             f"{[d.value for d in BenchmarkDataset]}, threats {[t.value for t in ThreatModel]}"
                             ) from None
    if name not in zoo:
        from robustlab.registry import Registry
        known: Registry[object] = Registry(f"RobustBench {dataset}/{threat} model")
        for n in zoo:
            known.register(n, n)
        raise RobustlabError(known.unknown_message(name))
    model_dir = Path(os.environ.get(ROBUSTBENCH_DIR_ENV, "models"))
    path = model_dir / dataset / threat / f"{name}.pt"
    if not path.is_file():
        raise RobustlabError(f"robustbench:{spec} needs a download: {path} is not there; fetch it on a machine with "
                             f"internet (robustbench.utils.load_model) and copy it there, or set {ROBUSTBENCH_DIR_ENV}")
    net = zoo[name]["model"]()
    sd = official_state_dict(read_checkpoint(path), path)  # RobustBench itself loads without weights_only
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:  # torch lists every key: keep the first line
        raise RobustlabError(f"{path} does not hold the weights of RobustBench's {name} ({_first_line(e)}); copy "
                             "the file of that model there again") from None
    classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
    size = 224 if dataset == "imagenet" else 32
    # RobustBench models take [0, 1] pixels and normalize inside themselves
    config = ModelConfig(arch=f"robustbench:{dataset}/{threat}/{name}", num_classes=classes, input_size=size,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dataset=dataset)
    model = RobustModel(net, config, name=name)
    model.checkpoint_path = path
    return model
