"""Checkpoints: the zoo, robustlab's own format, loading any supported checkpoint as a model, and saving.
Safe reading is robustlab/safe_loading.py; the official SDNet layout is read by robustlab/models/sdnet.py and
RobustBench's models by robustlab/robustbench.py."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from robustlab.errors import RobustlabError
from robustlab.files import write_atomic
from robustlab.models import ARCHS, ModelConfig, RobustModel, build_net
from robustlab.models.registry import CIFAR_MEAN, CIFAR_STD
from robustlab.models.sdnet import check_official_config, from_official_keys, infer_config, with_csc_settings
from robustlab.official_config import OfficialConfig, beside, read_official_config
from robustlab.robustbench import load_robustbench
from robustlab.safe_loading import plain_state_dict, read_checkpoint

FORMAT = "robustlab"
FORMAT_VERSION = 1
ZOO_PREFIX = "zoo:"
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
    guess: ModelConfig | None  # the architecture the checkpoint itself describes
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
            config = dataclasses.replace(config, arch=arch)
    else:
        sd = from_official_keys(plain_state_dict(obj, path))
        guess = infer_config(sd)
        if arch is not None:
            config = dataclasses.replace(guess or _default_config(arch, sd), arch=arch)
        elif guess is not None:
            config = guess
        else:
            raise RobustlabError(f"cannot tell the architecture of {path} from its keys "
                                 f"(first: {', '.join(list(sd)[:3])}); pass --arch (known: {', '.join(ARCHS)})")
        if official is not None:
            check_official_config(official, config, path)
    config, settings = with_csc_settings(config, official, robustlab_format)
    net = build_net(config)
    _load_weights(net, sd, config.arch, guess)
    model = RobustModel(net, config)
    model.csc_settings = settings
    return model


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
