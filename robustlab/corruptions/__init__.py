"""Common corruptions (Hendrycks & Dietterich): parameter tables, engine, suites and on-disk readers."""
from robustlab.corruptions.engine import CORRUPTIONS, Corruption, corrupt, parameter
from robustlab.corruptions.tables import BENCHMARK, EXTRA, TABLES

__all__ = ["BENCHMARK", "CORRUPTIONS", "Corruption", "EXTRA", "TABLES", "corrupt", "parameter"]
