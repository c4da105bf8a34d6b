"""Common corruptions (Hendrycks & Dietterich): parameter sets, engine, suites and on-disk readers."""
from robustlab.corruptions.engine import CORRUPTIONS, Corruption, corrupt, parameter
from robustlab.corruptions.parameters import BENCHMARK, EXTRA, PARAMETER_SETS

__all__ = ["BENCHMARK", "CORRUPTIONS", "Corruption", "EXTRA", "PARAMETER_SETS", "corrupt", "parameter"]
