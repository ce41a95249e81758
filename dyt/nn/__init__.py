"""Norm layers, the registry of their names, and the site-aware factory models are built with."""

from dyt.nn.factory import NormFactory, build_norm_factory
from dyt.nn.norms import LayerNorm, RMSNorm
from dyt.nn.pointwise import Derf, DyT
from dyt.nn.registry import get_norm_class, norm_names, register_norm

__all__ = [
    "DyT", "Derf", "LayerNorm", "NormFactory", "RMSNorm",
    "build_norm_factory", "get_norm_class", "norm_names", "register_norm",
]
