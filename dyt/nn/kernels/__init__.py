"""Fused point-wise norms: ``weight * f(alpha * x [+ shift]) + bias`` with ``f`` = tanh (DyT) or erf (Derf).

One autograd function serves both devices. Its forward is one pass over ``x``; its backward
recomputes ``f`` from the saved input (only ``x``, ``alpha``, ``shift`` and ``weight`` are saved, never
``f(z)`` or another activation-sized intermediate) and yields the gradients of ``x``, ``alpha`` (a
reduction over every element), ``shift``, ``weight`` and ``bias``. On CUDA the backward is one pass;
on CPU Inductor splits it into two loops (``grad_x``, then all the reductions together).

Backends: CPU through TorchInductor (``kernels.cpu``), CUDA through Triton (``kernels.cuda``,
channels_last only). ``fused_supported`` says whether one serves a given input; ``DyT``/``Derf`` fall
back to plain PyTorch otherwise. If the CPU backend cannot compile (no working C++ compiler), the
first call warns once and every later call reports the backend as unavailable.
"""

from __future__ import annotations

import functools
import warnings

import torch

from dyt.nn.kernels import cpu
from dyt.nn.kernels.cpu import fast_tanh

__all__ = ["FUNCTIONS", "IMPLS", "check_impl", "fast_tanh", "fused_or_none", "fused_pointwise", "fused_supported"]

FUNCTIONS = ("tanh", "erf")
# "auto": the fused kernel when one serves the input, else plain PyTorch; "fused": the fused kernel or
# an error; "eager": always plain PyTorch (exact torch.tanh / torch.erf).
IMPLS = ("auto", "fused", "eager")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_broken: dict[str, str] = {}  # device type -> why its backend failed
# Devices whose fused kernel "auto" picks. The Triton (CUDA) kernels pass their tests under Triton's
# CPU interpreter but have not yet been validated on a GPU: until they are, CUDA users opt in with
# impl="fused" (tests/test_fused.py -m gpu and scripts/bench/norms.py --device cuda check them).
AUTO_DEVICES = ("cpu",)


def _cuda_backend():
    from dyt.nn.kernels import cuda

    return cuda if cuda.available() else None


def _backend(device_type: str):
    if device_type == "cpu":
        return cpu
    if device_type == "cuda":
        return _cuda_backend()
    return None


def fused_supported(x: torch.Tensor, layout: str) -> bool:
    """True when a fused kernel serves ``x`` (device, dtype, layout) and has not failed to build."""
    device = x.device.type
    if x.dtype not in _DTYPES or device in _broken or _backend(device) is None:
        return False
    # The Triton kernels cover channels_last and the dtypes Triton computes in fp32.
    return device == "cpu" or (layout == "channels_last" and x.dtype != torch.float64)


def _as_kernel_view(x: torch.Tensor, dim: int, layout: str) -> torch.Tensor:
    """(rows, C) for channels_last, (N, C, spatial) for channels_first; contiguous, and detached so
    that compiled kernels see a plain tensor rather than a view of the caller's tensor."""
    x = x.contiguous()
    return (x.view(-1, dim) if layout == "channels_last" else x.view(x.shape[0], dim, -1)).detach()


class _FusedPointwise(torch.autograd.Function):
    """Autograd glue; ``weight``/``bias``/``shift`` arrive as tensors (ones/zeros where absent)."""

    @staticmethod
    def forward(ctx, x, alpha, shift, weight, bias, fn, layout, out_dtype, backend):
        xk = _as_kernel_view(x, weight.numel(), layout)
        y = backend.forward(fn, xk, alpha, shift, weight, bias, layout, out_dtype)
        ctx.save_for_backward(xk, alpha, shift, weight)
        ctx.fn, ctx.layout, ctx.backend, ctx.x_shape = fn, layout, backend, x.shape
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        xk, alpha, shift, weight = ctx.saved_tensors
        gk = _as_kernel_view(g, weight.numel(), ctx.layout)
        gx, galpha, gshift, gweight, gbias = ctx.backend.backward(ctx.fn, gk, xk, alpha, shift, weight, ctx.layout)
        gshift = None if gshift is None else gshift.to(shift.dtype)
        return (
            gx.view(ctx.x_shape),
            galpha.to(alpha.dtype),
            gshift,
            gweight.to(weight.dtype),
            gbias.to(weight.dtype),
            None,
            None,
            None,
            None,
        )


def _warn_broken(device: str, error: Exception) -> None:
    _broken[device] = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"dyt: the fused {device} kernel could not be built ({_broken[device].splitlines()[0]}); "
        "using the plain PyTorch path from now on. On CPU the fused path needs a working C++ "
        "compiler for torch.compile (g++ or clang, or set CXX); impl='eager' silences this.",
        RuntimeWarning,
        stacklevel=3,
    )


def fused_pointwise(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    fn: str,
    layout: str,
    shift: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``weight * fn(alpha * x + shift) + bias`` through the fused kernel of ``x``'s device.

    ``weight``, ``bias`` and ``shift`` may be ``None`` (absent). The output dtype follows PyTorch's
    type promotion over the inputs, as the plain expression's does. Returns ``None`` when the kernel
    could not be built (after warning once); callers then run the plain path. Check
    ``fused_supported`` first: an unsupported input raises.
    """
    if fn not in FUNCTIONS:
        raise ValueError(f"unknown fused function {fn!r}; valid functions are: {', '.join(FUNCTIONS)}")
    if not fused_supported(x, layout):
        raise RuntimeError(
            f"no fused kernel for a {x.dtype} tensor on {x.device} with layout {layout!r}; "
            "use impl='auto' or impl='eager'"
        )
    present = [t for t in (alpha, weight, bias, shift) if t is not None]
    out_dtype = functools.reduce(torch.promote_types, [t.dtype for t in present], x.dtype)
    dim = x.shape[-1] if layout == "channels_last" else x.shape[1]
    param = {"device": x.device, "dtype": alpha.dtype}
    weight = torch.ones(dim, **param) if weight is None else weight
    bias = torch.zeros(dim, **param) if bias is None else bias
    shift = torch.zeros(1, **param) if shift is None and fn == "erf" else shift
    try:
        return _FusedPointwise.apply(x, alpha, shift, weight, bias, fn, layout, out_dtype, _backend(x.device.type))
    except torch._dynamo.exc.BackendCompilerFailed as error:
        _warn_broken(x.device.type, error)
        return None


def check_impl(impl: str) -> str:
    """``impl`` if it is one of ``IMPLS``; otherwise a ValueError naming the valid choices."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid choices are: {', '.join(IMPLS)}")
    return impl


def fused_or_none(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    fn: str,
    layout: str,
    impl: str,
    shift: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The module-level policy of ``DyT``/``Derf``: the fused result, or ``None`` for "run the plain path".

    Plain runs for ``impl="eager"``, empty inputs, a backend that failed to build, and (with
    ``impl="auto"``) devices outside ``AUTO_DEVICES`` and inputs no kernel serves; ``impl="fused"``
    raises for those instead. Inside
    ``torch.compile`` the caller's graph is left to the compiler (DyT then uses ``fast_tanh`` so
    Inductor fuses a cheap tanh into it).
    """
    if impl == "eager" or x.numel() == 0 or torch.compiler.is_compiling() or x.device.type in _broken:
        return None  # a backend that failed to build has already warned
    if impl == "auto" and (x.device.type not in AUTO_DEVICES or not fused_supported(x, layout)):
        return None
    return fused_pointwise(x, alpha, weight, bias, fn=fn, layout=layout, shift=shift)
