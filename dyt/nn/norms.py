"""The normalization layers DyT replaces: LayerNorm and RMSNorm, in both layouts, and BatchNorm.

LayerNorm and RMSNorm compute statistics over the channel dimension. ``layout="channels_last"``
normalizes the last dimension of (..., C); ``layout="channels_first"`` normalizes dimension 1 of
(N, C, H, W) as ConvNeXt's stem and downsampling layers do. BatchNorm computes them per channel over the
batch, for the ConvNets of paper Table 16 (channels-first only). Parameter and buffer names (``weight``,
``bias``, ``running_mean``...) match ``torch.nn`` and timm, so their state dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyt.nn.registry import register_norm

LAYOUTS = ("channels_last", "channels_first")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts are: {', '.join(LAYOUTS)}")
    return layout


class _ChannelNorm(nn.Module):
    """Shared parameters and bookkeeping of the per-channel affine norms."""

    pointwise = False  # computes statistics over channels (a reduction), unlike DyT

    def __init__(self, dim: int, *, eps: float, layout: str, affine: bool, bias: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.dim, self.eps, self.layout = dim, eps, check_layout(layout)
        self.affine = affine
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(dim, **factory)) if affine else None
        self.bias = nn.Parameter(torch.empty(dim, **factory)) if affine and bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "channels_first":
            return self._normalize(x.movedim(1, -1)).movedim(-1, 1)
        return self._normalize(x)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, layout={self.layout}, affine={self.affine}, bias={self.bias is not None}"


@register_norm("layernorm")
class LayerNorm(_ChannelNorm):
    """LayerNorm over channels: ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-6,
        layout: str = "channels_last",
        affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, eps=eps, layout=layout, affine=affine, bias=bias, device=device, dtype=dtype)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)


@register_norm("rmsnorm")
class RMSNorm(_ChannelNorm):
    """RMSNorm over channels: ``x / sqrt(mean(x^2) + eps) * weight (+ bias)``; LLaMA has no bias."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-6,
        layout: str = "channels_last",
        affine: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, eps=eps, layout=layout, affine=affine, bias=bias, device=device, dtype=dtype)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 as LLaMA and Hugging Face do; the output returns to the input dtype.
        y = x.float()
        y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


@register_norm("batchnorm")
class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """``torch.nn``'s BatchNorm for (N, C, ...) inputs of any rank: each channel is normalized with its
    mean and variance over the batch and every position while training, with running estimates (momentum
    ``momentum``) in evaluation. The baseline of paper Table 16 (ResNet-50 and VGG19, where DyT falls
    behind it, App. D), so ``norm=batchnorm`` and ``norm=dyt`` run the same recipe.

    Built only at channels-first sites: at a channels-last (token) site BatchNorm would mix statistics
    across the sequences of a batch and, in a causal language model, across future tokens."""

    pointwise = False
    layouts = ("channels_first",)

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        layout: str = "channels_first",
        device=None,
        dtype=None,
    ) -> None:
        if check_layout(layout) != "channels_first":
            raise ValueError(
                f"norm 'batchnorm' is built only at channels-first sites, as the BatchNorms of ConvNets (models "
                f"resnet50 and vgg19, paper Table 16); this model asks for a {layout} norm: choose a norm that "
                "normalizes each token on its own (layernorm, rmsnorm, dyt, derf)"
            )
        super().__init__(dim, eps=eps, momentum=momentum, affine=affine, device=device, dtype=dtype)
        self.dim, self.layout = dim, layout

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"BatchNorm expects (N, C, ...) inputs; got shape {tuple(x.shape)}")
