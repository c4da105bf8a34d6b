"""robustlab: robustness evaluation of image classifiers (corruptions, attacks, SDNet's adaptive lambda)."""
from robustlab.api import evaluate, load_results, summarize
from robustlab.checkpoints import load_model, save_checkpoint
from robustlab.models import last_residual, set_lambda
from robustlab.version import __version__

__all__ = ["__version__", "evaluate", "last_residual", "load_model", "load_results", "save_checkpoint", "set_lambda",
           "summarize"]
