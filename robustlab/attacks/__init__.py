"""Adversarial attacks: specs and suites, library adapters, the checking harness and gradient-masking diagnostics."""
from robustlab.attacks.adapters import ATTACKS, AttackEntry  # importing the adapters registers them
from robustlab.attacks.diagnostics import (
    Check,
    check_black_box,
    check_deterministic,
    check_eps_monotonic,
    check_large_eps,
    check_zero_gradients,
    input_gradient,
    run_diagnostics,
)
from robustlab.attacks.harness import BatchOutcome, attack_batch, predicted, transfer_batch
from robustlab.attacks.spec import AttackSpec, make_spec, parse_eps
from robustlab.attacks.suites import attack_suite_names, load_attack_suite

__all__ = ["ATTACKS", "AttackEntry", "AttackSpec", "BatchOutcome", "Check", "attack_batch", "attack_suite_names",
           "check_black_box", "check_deterministic", "check_eps_monotonic", "check_large_eps", "check_zero_gradients",
           "input_gradient", "load_attack_suite", "make_spec", "parse_eps", "predicted", "run_diagnostics",
           "transfer_batch"]
