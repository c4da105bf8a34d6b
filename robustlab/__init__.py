"""robustlab: robustness evaluation of image classifiers (corruptions, attacks, SDNet's adaptive lambda)."""
__version__ = "0.1.0"

from robustlab.api import evaluate, load_results, summarize  # noqa: E402
from robustlab.checkpoints import load_model, save_checkpoint  # noqa: E402
from robustlab.models import last_residual, set_lambda  # noqa: E402

__all__ = ["__version__", "evaluate", "last_residual", "load_model", "load_results", "save_checkpoint", "set_lambda",
           "summarize"]
