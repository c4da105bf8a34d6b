"""Reading checkpoint files safely: torch.load with weights only, an audit of what a refused pickle would have
run, and the tensors of a plain state_dict."""
from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

from robustlab.errors import RobustlabError


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
        raise RobustlabError(f"{path} is not a PyTorch checkpoint ({first_line(e)}); check the file") from None
    except Exception as e:  # torch's unpickler fails on garbage with whatever error its parser hits first
        raise RobustlabError(f"{path} is truncated or not a PyTorch checkpoint ({first_line(e)}); "
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
                names.append(str(arg).replace(" ", "."))  # its argument: the text "module name"
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle at all
        return []
    return sorted({n for n in names if not n.startswith(("torch.", "collections.OrderedDict"))})


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def plain_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a plain state_dict or of a dict with 'state_dict', their keys without DataParallel's
    'module.' prefix."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RobustlabError(f"{path} holds no state_dict (expected a dict of tensors, or a dict with 'state_dict')")
    return {(key[len("module."):] if key.startswith("module.") else key): value for key, value in sd.items()}
