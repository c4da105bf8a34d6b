"""Per-image random streams for attacks: each image's random start (and Square's initial stripes) is drawn from
its own generator, seeded by the image, so that an image's adversarial example does not depend on which other
images share its batch. That is what lets the worst-case mode (`--cascade`) attack only the images still
undecided and still get the figure of attacking every image.

torchattacks and AutoAttack draw batch-shaped tensors from torch's global generator; rather than re-writing their
attacks, a TorchFunctionMode fills every random tensor of shape (rows, C, H, W) (or (rows, 1, 1, 1), PGD-L2's
radii) row by row from the rows' generators. Draws of other shapes (Square's per-iteration square, shared by the
batch) still come from the global generator, which the harness seeds per batch."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

# the in-place fills and factories the libraries draw random starts with
_FILLS = {torch.Tensor.uniform_, torch.Tensor.normal_}
_FACTORIES = {torch.rand, torch.randn}


def image_seed(seed: int) -> int:
    """An image's generator seed from its own seed (batch seed + its offset), hashed so that its stream is not the
    global stream that the same number seeds."""
    return int(np.random.SeedSequence([seed, 0x1D]).generate_state(1, np.uint64)[0] >> 1)


class ImageDraws(TorchFunctionMode):
    """While active, random tensors with one row per image are drawn row by row from the images' generators (on
    the CPU, so the same on every device)."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seeds: Sequence[int]) -> ImageDraws:
        return cls([torch.Generator().manual_seed(image_seed(s)) for s in seeds])

    def rows(self, mask: torch.Tensor) -> ImageDraws:
        """The draws of a subset of the rows (a boolean mask), continuing their streams."""
        keep = mask.detach().cpu().reshape(-1).tolist()
        return ImageDraws([g for g, k in zip(self.generators, keep) if k])

    def _per_image(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and shape[0] == len(self.generators) > 0

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        if func in _FILLS and self._per_image(args[0].shape) and "generator" not in kwargs:
            target = args[0]
            row = torch.empty(target.shape[1:], dtype=target.dtype)
            filled = []
            for g in self.generators:
                func(row, *args[1:], generator=g, **kwargs)
                filled.append(row.clone())
            with torch.no_grad():
                target.copy_(torch.stack(filled))
            return target
        if func in _FACTORIES and args and "generator" not in kwargs:
            shape = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple, torch.Size)) else args
            if all(isinstance(s, int) for s in shape) and self._per_image(shape):
                options = {k: v for k, v in kwargs.items() if k in ("dtype", "device")}
                rows = [func(*shape[1:], generator=g, dtype=options.get("dtype")) for g in self.generators]
                return torch.stack(rows).to(options.get("device") or "cpu")
        return func(*args, **kwargs)
