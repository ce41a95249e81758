"""Point-wise replacements for normalization: Dynamic Tanh (DyT) and Dynamic erf (Derf).

DyT (paper Sec. 4, Eq. 2): ``DyT(x) = weight * tanh(alpha * x) + bias`` with ``alpha`` one learnable
scalar per layer (init 0.5) and ``weight``/``bias`` per channel (init 1 and 0). Nothing is reduced
over channels or tokens. The paper's ablations are options of the same layer: the squashing function
(Table 7: tanh, hardtanh, sigmoid, identity) and a fixed alpha (Table 8).

Derf (Chen et al. 2025, Eq. 10): ``Derf(x) = weight * erf(alpha * x + shift) + bias`` with ``alpha``
(init 0.5) and ``shift`` (init 0) learnable scalars.

Parameter names (``alpha``, ``weight``, ``bias``; ``alpha`` of shape (1,)) match the official code,
so its checkpoints load unchanged.

``alpha_param="log"`` (not the paper's) learns ``log_alpha`` with ``alpha = exp(alpha_gain * log_alpha)``
instead of ``alpha`` itself. Adam moves a scalar parameter by about the learning rate per step whatever
its size, so a plain alpha of 25 changes by 0.1% per step and cannot follow an input whose std grows
100-fold within a short run; in log form alpha changes by about ``alpha_gain * lr`` *relatively* per
step, at any size (docs/analysis.md, 'DyT below the paper's scale').
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dyt.nn.kernels import check_impl, fast_tanh, fused_or_none
from dyt.nn.norms import check_layout
from dyt.nn.registry import register_norm

# Table 7 of the paper. sigmoid is used as is (not re-centred): the paper attributes tanh's lead over it
# to tanh being zero-centred.
ALPHA_PARAMS = ("linear", "log")

SQUASH = {
    "tanh": torch.tanh,
    "hardtanh": nn.functional.hardtanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


class PointwiseNorm(nn.Module):
    """Per-channel ``weight``/``bias`` around a function of ``alpha * x`` with a learnable (or fixed)
    scalar ``alpha``: the base class of every point-wise norm (``dyt.nn.probes`` finds them by it).

    ``alpha`` is a parameter (or, fixed, a buffer) of shape (1,); with ``alpha_param="log"`` the parameter
    is ``log_alpha`` and ``alpha`` the tensor ``exp(alpha_gain * log_alpha)``. Set it with :meth:`set_alpha`."""

    pointwise = True  # no statistics: models key recipe quirks (DiT zero-init, LLaMA embed scale) on this

    def __init__(self, dim: int, *, layout: str, affine: bool, bias: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.dim, self.layout, self.affine = dim, check_layout(layout), affine
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(dim, **factory)) if affine else None
        self.bias = nn.Parameter(torch.empty(dim, **factory)) if affine and bias else None

    def _make_alpha(self, learn: bool, param: str, gain: float, device, dtype) -> None:
        if param not in ALPHA_PARAMS:
            raise ValueError(f"unknown alpha_param {param!r}; valid choices are: {', '.join(ALPHA_PARAMS)}")
        if param == "log" and not learn:
            raise ValueError("alpha_param='log' needs a learned alpha (learn_alpha=True)")
        if not gain > 0:
            raise ValueError(f"alpha_gain must be a positive number, got {gain!r}")
        self.alpha_param, self.alpha_gain = param, float(gain)
        value = torch.empty(1, device=device, dtype=dtype)
        if param == "log":
            self.log_alpha = nn.Parameter(value)
        elif learn:
            self.alpha = nn.Parameter(value)
        else:
            self.register_buffer("alpha", value)

    def __getattr__(self, name: str):
        if name == "alpha" and "log_alpha" in self._parameters:
            return torch.exp(self.alpha_gain * self._parameters["log_alpha"])
        return super().__getattr__(name)

    @torch.no_grad()
    def set_alpha(self, value: float) -> None:
        """Set alpha (in either parameterisation) to ``value``."""
        if self.alpha_param == "log":
            self.log_alpha.fill_(math.log(value) / self.alpha_gain)
        else:
            self.alpha.fill_(value)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        shape = (-1, *([1] * (y.dim() - 2))) if self.layout == "channels_first" else (-1,)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y

    def _alpha_repr(self) -> str:
        return "" if self.alpha_param == "linear" else f", alpha_param=log, alpha_gain={self.alpha_gain}"


@register_norm("dyt")
class DyT(PointwiseNorm):
    """Dynamic Tanh: ``weight * squash(alpha * x) + bias`` (paper Eq. 2 with ``squash=tanh``).

    Args:
        dim: number of channels.
        alpha_init: initial value of the scalar ``alpha`` (paper default 0.5; LLaMA per Table 10).
        squash: ``tanh`` (DyT), or the Table 7 ablations ``hardtanh``, ``sigmoid``, ``identity``.
        learn_alpha: ``False`` keeps ``alpha`` fixed at ``alpha_init`` (Table 8's "without alpha").
        alpha_param, alpha_gain: ``linear`` (the paper: learn ``alpha``) or ``log`` (learn ``log_alpha``,
            ``alpha = exp(alpha_gain * log_alpha)``; module docstring).
        layout: ``channels_last`` (..., C) or ``channels_first`` (N, C, ...).
        affine: per-channel ``weight`` (and ``bias``); DiT's norms have none, adaLN supplies them.
        bias: per-channel ``bias``; LLaMA's DyT has none, as its RMSNorm had none.
        impl: ``auto`` (on CPU the hand-written C++ kernel of ``dyt.nn.kernels`` for fp32/bf16 inputs,
            else plain PyTorch; CUDA's Triton kernel only with ``fused`` until validated on a GPU; inside
            ``torch.compile`` the compiler fuses the plain expression with ``fast_tanh``), ``fused`` (the
            kernel or an error), ``eager`` (plain PyTorch, exact ``torch.tanh``, everywhere).
            Only ``squash="tanh"`` has a kernel.
    """

    def __init__(
        self,
        dim: int,
        *,
        alpha_init: float = 0.5,
        squash: str = "tanh",
        learn_alpha: bool = True,
        alpha_param: str = "linear",
        alpha_gain: float = 1.0,
        layout: str = "channels_last",
        affine: bool = True,
        bias: bool = True,
        impl: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, layout=layout, affine=affine, bias=bias, device=device, dtype=dtype)
        if squash not in SQUASH:
            raise ValueError(f"unknown squash {squash!r}; valid choices are: {', '.join(SQUASH)}")
        if check_impl(impl) == "fused" and squash != "tanh":
            raise ValueError(f"impl='fused' needs squash='tanh' (got {squash!r}); use impl='auto' or 'eager'")
        self.impl = impl
        self.alpha_init, self.squash, self.learn_alpha = float(alpha_init), squash, learn_alpha
        self._make_alpha(learn_alpha, alpha_param, alpha_gain, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.set_alpha(self.alpha_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.squash == "tanh":
            y = fused_or_none(x, self.alpha, self.weight, self.bias, fn="tanh", layout=self.layout, impl=self.impl)
            if y is not None:
                return y
            if self.impl != "eager" and torch.compiler.is_compiling():
                # a tanh the compiler vectorizes (torch.tanh is slow on CPU)
                return self._affine(fast_tanh(self.alpha * x))
        return self._affine(SQUASH[self.squash](self.alpha * x))

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, alpha_init={self.alpha_init}, squash={self.squash}, "
            f"learn_alpha={self.learn_alpha}, layout={self.layout}, affine={self.affine}, "
            f"bias={self.bias is not None}{self._alpha_repr()}"
        )


@register_norm("derf")
class Derf(PointwiseNorm):
    """Dynamic erf: ``weight * erf(alpha * x + shift) + bias`` with learnable scalars ``alpha``, ``shift``."""

    def __init__(
        self,
        dim: int,
        *,
        alpha_init: float = 0.5,
        shift_init: float = 0.0,
        alpha_param: str = "linear",
        alpha_gain: float = 1.0,
        layout: str = "channels_last",
        affine: bool = True,
        bias: bool = True,
        impl: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, layout=layout, affine=affine, bias=bias, device=device, dtype=dtype)
        self.impl = check_impl(impl)  # as DyT's: auto | fused | eager
        self.alpha_init, self.shift_init = float(alpha_init), float(shift_init)
        self._make_alpha(True, alpha_param, alpha_gain, device, dtype)
        self.shift = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.set_alpha(self.alpha_init)
        with torch.no_grad():
            self.shift.fill_(self.shift_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = fused_or_none(
            x, self.alpha, self.weight, self.bias, fn="erf", layout=self.layout, impl=self.impl, shift=self.shift
        )
        return self._affine(torch.erf(self.alpha * x + self.shift)) if y is None else y

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, alpha_init={self.alpha_init}, shift_init={self.shift_init}, "
            f"layout={self.layout}, affine={self.affine}, bias={self.bias is not None}{self._alpha_repr()}"
        )
