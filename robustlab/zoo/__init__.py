"""Checkpoints shipped with the package, loaded as `zoo:NAME` (see README for how they were trained)."""
