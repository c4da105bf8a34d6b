"""Architectures (each module registers itself in ARCHS) and the CSC layer controls."""
from robustlab.models import rdsn, resnet, sdnet  # noqa: F401  (registration)
from robustlab.models.builder import build_net
from robustlab.models.csc import CSCConv2d, csc_layer, csc_layers, get_lambda, last_residual, set_lambda
from robustlab.models.registry import ARCHS, ArchSpec, ModelConfig, RobustModel, register_arch

__all__ = ["ARCHS", "ArchSpec", "CSCConv2d", "ModelConfig", "RobustModel", "build_net", "csc_layer", "csc_layers",
           "get_lambda", "last_residual", "register_arch", "set_lambda"]
