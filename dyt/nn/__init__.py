"""Norm layers, the registry of their names, and the site-aware factory models are built with."""

from dyt.nn.convert import ConversionReport, convert
from dyt.nn.factory import NormFactory, build_norm_factory, norm_tag
from dyt.nn.fold import fold
from dyt.nn.normfree import NoNorm, SigmaReparamLinear
from dyt.nn.norms import BatchNorm, LayerNorm, RMSNorm
from dyt.nn.pointwise import Derf, DyT, PointwiseNorm
from dyt.nn.probes import alpha_stats, pointwise_norms
from dyt.nn.registry import get_norm_class, norm_names, register_norm

__all__ = [
    "BatchNorm",
    "ConversionReport",
    "DyT",
    "Derf",
    "LayerNorm",
    "NoNorm",
    "NormFactory",
    "PointwiseNorm",
    "RMSNorm",
    "SigmaReparamLinear",
    "alpha_stats",
    "build_norm_factory",
    "convert",
    "fold",
    "get_norm_class",
    "norm_names",
    "norm_tag",
    "pointwise_norms",
    "register_norm",
]
