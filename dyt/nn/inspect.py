"""Recognising normalization layers in any model (this library's, torch's, timm's, Hugging Face's): what
``dyt.convert`` replaces and what the analyses (``dyt.analysis.capture``) capture."""

from __future__ import annotations

import re

import torch
from torch import nn

_CANDIDATE_NAME = re.compile(r"layernorm|rmsnorm", re.IGNORECASE)
_CHANNELS_FIRST_NAME = re.compile(r"[23]d(fp32)?$", re.IGNORECASE)  # timm: LayerNorm2d, RmsNorm2dFp32, ...


def is_norm_candidate(module: nn.Module) -> bool:
    """A LayerNorm / RMSNorm by class, or by name unless it wraps norms of its own (AdaLayerNormZero)."""
    if isinstance(module, nn.LayerNorm | nn.RMSNorm):
        return True
    if not _CANDIDATE_NAME.search(type(module).__name__):
        return False
    return not any(is_norm_candidate(m) for m in module.modules() if m is not module)


def is_batchnorm(module: nn.Module) -> bool:
    """Any torch BatchNorm (1d/2d/3d, SyncBatchNorm, this library's ``BatchNorm``)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def norm_layout(module: nn.Module) -> str:
    """``channels_first`` or ``channels_last``: the module's ``layout`` attribute, else by its class name
    (timm's ``LayerNorm2d``, ``RmsNorm2dFp32``, ...)."""
    layout = getattr(module, "layout", None)
    if layout in ("channels_last", "channels_first"):
        return layout
    return "channels_first" if _CHANNELS_FIRST_NAME.search(type(module).__name__) else "channels_last"


def tensor_attr(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>`` if it is a tensor (a norm's ``weight`` / ``bias``), else None."""
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def norm_eps(module: nn.Module) -> float | None:
    """A norm's epsilon (``eps``, or Hugging Face's ``variance_epsilon``), or None."""
    for name in ("eps", "variance_epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, float | int) and not isinstance(value, bool):
            return float(value)
    return None
