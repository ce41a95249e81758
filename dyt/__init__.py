"""dyt: Transformers without Normalization (DyT) in one config-driven PyTorch codebase."""

from dyt.nn import Derf, DyT, LayerNorm, NormFactory, RMSNorm, build_norm_factory, convert, fold, norm_names

__all__ = ["DyT", "Derf", "LayerNorm", "NormFactory", "RMSNorm", "build_norm_factory", "convert", "fold", "norm_names"]
__version__ = "0.1.0"
