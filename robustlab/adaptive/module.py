"""AdaptiveLambda: a model whose CSC layer takes the lambda Algorithm 1 selects, per batch."""
from __future__ import annotations

import torch
import torch.nn as nn

from robustlab.adaptive.calibration import Calibration
from robustlab.adaptive.per_image import select_per_image
from robustlab.adaptive.per_set import SetSums
from robustlab.adaptive.residuals import layer_solver
from robustlab.models import RobustModel, csc_layer
from robustlab.models.csc import restored


class AdaptiveLambda(nn.Module):
    """A model whose CSC layer takes, per batch, the lambda Algorithm 1 selects: per image, or one for the batch.

    Selection is not differentiable; gradients pass straight through it (BPDA with the identity), so an
    attack on this module attacks the whole pipeline, selection included.
    """

    def __init__(self, model: RobustModel, calib: Calibration, *, per_image: bool) -> None:
        super().__init__()
        self.model, self.calib, self.per_image = model, calib, per_image
        self.config, self.name = model.config, model.name
        self.last_lambdas: torch.Tensor | None = None
        self.train(model.training)  # a wrapper of an eval-mode model is in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            presolved = None
            if self.per_image:
                chosen = select_per_image(self.model, x.detach(), self.calib)
                lambdas, presolved = chosen.lambdas.to(x.dtype), chosen.presolved
            else:
                solve = layer_solver(self.model, x.detach(), self.calib.grid, self.calib.layer)  # for every pass
                lambdas = x.new_full((len(x),), SetSums(lambda: [(solve, len(x))], self.calib).search())
        self.last_lambdas = lambdas
        # a gradient needs the layer solved in the graph; an evaluation takes the codes the selection solved
        with restored(csc_layer(self.model, self.calib.layer)) as csc, \
                csc.presolved(None if torch.is_grad_enabled() else presolved):
            csc.lmbda = lambdas
            return self.model(x)
