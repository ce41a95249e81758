"""Fused point-wise norms: ``weight * f(alpha * x + shift) + bias`` with ``f`` = tanh (DyT) or erf (Derf).

One autograd function serves every backend. Its forward is one pass over ``x``; its backward
recomputes ``f`` from the saved input (only ``x``, ``alpha``, ``shift`` and ``weight`` are saved, never
``f(z)`` or another activation-sized intermediate) and yields the gradients of ``x``, ``alpha`` (a
reduction over every element), ``shift``, ``weight`` and ``bias``.

Backends, by device:

- CPU: the hand-written C++ kernel (``kernels.cpp``: one-pass forward and backward, fp32 and bf16),
  compiled on first use. If it cannot be built, one warning, then TorchInductor's generated kernel
  (``kernels.cpu``, also fp16 and fp64; its backward takes two loops) where a C++ compiler exists,
  else plain PyTorch.
- CUDA: Triton (``kernels.cuda``, channels_last only), opt-in until validated on a GPU.

``fused_supported`` says whether one serves a given input; ``DyT``/``Derf`` fall back to plain PyTorch
otherwise. Inside ``torch.compile`` no kernel runs: the compiler fuses the plain expression (DyT with
``fast_tanh``), and the first such call says so once in the log.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import warnings

import torch

from dyt.nn.kernels import cpp, cpu
from dyt.nn.kernels.cpu import fast_tanh

__all__ = ["FUNCTIONS", "IMPLS", "check_impl", "fast_tanh", "fused_or_none", "fused_pointwise", "fused_supported"]

log = logging.getLogger(__name__)

FUNCTIONS = ("tanh", "erf")
# "auto": the fused kernel when one serves the input, else plain PyTorch; "fused": the fused kernel or
# an error; "eager": always plain PyTorch (exact torch.tanh / torch.erf).
IMPLS = ("auto", "fused", "eager")
_broken: dict[str, str] = {}  # backend name ("cpp", "inductor", "cuda") -> why it failed
# Devices whose fused kernel "auto" picks. The Triton (CUDA) kernels pass their tests under Triton's
# CPU interpreter but have not yet been validated on a GPU: until they are, CUDA users opt in with
# impl="fused" (scripts/ci/gpu_check.sh runs their tests and benchmarks in one call).
AUTO_DEVICES = ("cpu",)
_INDUCTOR_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _backend(device_type: str):
    """(name, module) of the device's working backend, or None."""
    if device_type == "cpu":
        for name, module in (("cpp", cpp), ("inductor", cpu)):
            if name not in _broken:
                return name, module
        return None
    if device_type == "cuda" and "cuda" not in _broken:
        from dyt.nn.kernels import cuda

        return ("cuda", cuda) if cuda.available() else None
    return None


def fused_supported(x: torch.Tensor, layout: str, out_dtype: torch.dtype | None = None) -> bool:
    """True when a fused kernel serves ``x`` (device, dtype, layout; ``out_dtype`` defaults to ``x``'s)
    and has not failed to build."""
    backend = _backend(x.device.type)
    if backend is None:
        return False
    dtypes = {"cpp": cpp.DTYPES, "inductor": _INDUCTOR_DTYPES, "cuda": _TRITON_DTYPES}[backend[0]]
    # The Triton kernels cover channels_last only.
    return (
        x.dtype in dtypes and (out_dtype or x.dtype) in dtypes and (backend[0] != "cuda" or layout == "channels_last")
    )


def _as_kernel_view(x: torch.Tensor, dim: int, layout: str) -> torch.Tensor:
    """(rows, C) for channels_last, (N, C, spatial) for channels_first; contiguous, and detached so
    that compiled kernels see a plain tensor rather than a view of the caller's tensor."""
    x = x.contiguous()
    return (x.view(-1, dim) if layout == "channels_last" else x.view(x.shape[0], dim, math.prod(x.shape[2:]))).detach()


class _FusedPointwise(torch.autograd.Function):
    """Autograd glue; ``weight``/``bias``/``shift`` arrive as tensors (ones/zeros where absent)."""

    @staticmethod
    def forward(ctx, x, alpha, shift, weight, bias, fn, layout, out_dtype, backend):
        xk = _as_kernel_view(x, weight.numel(), layout)
        y = backend.forward(fn, xk, alpha, shift, weight, bias, layout, out_dtype)
        ctx.save_for_backward(xk, alpha, shift, weight)
        ctx.fn, ctx.layout, ctx.backend, ctx.x_shape = fn, layout, backend, x.shape
        return y  # in the kernel's shape: the caller views it as x's (see fused_pointwise)

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


def _out_dtype(x: torch.Tensor, *params: torch.Tensor | None) -> torch.dtype:
    """The dtype of the plain expression's result: PyTorch's type promotion over the inputs."""
    return functools.reduce(torch.promote_types, [t.dtype for t in params if t is not None], x.dtype)


def _has_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None or shutil.which("g++") is not None


def _give_up(name: str, error: Exception) -> None:
    """Mark backend ``name`` broken and warn once, naming what runs from now on. Without any C++ compiler
    the Inductor kernel cannot build either: both are marked, so the user sees one warning."""
    _broken[name] = f"{type(error).__name__}: {error}"
    if name == "cpp" and not _has_compiler():
        _broken["inductor"] = "no C++ compiler"
    fallback = "TorchInductor's generated kernel" if name == "cpp" and "inductor" not in _broken else "plain PyTorch"
    warnings.warn(
        f"dyt: the {name} kernel for the point-wise norms could not be built ({_broken[name].splitlines()[0]}); "
        f"using {fallback} from now on. The CPU kernels need a working C++ compiler (g++ or clang, or set CXX) "
        "and, for the C++ kernel, ninja (pip install ninja); impl='eager' silences this.",
        RuntimeWarning,
        stacklevel=4,
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
    backend: str | None = None,
) -> torch.Tensor | None:
    """``weight * fn(alpha * x + shift) + bias`` through the fused kernel of ``x``'s device.

    ``weight``, ``bias`` and ``shift`` may be ``None`` (absent). The output dtype follows PyTorch's
    type promotion over the inputs, as the plain expression's does. Returns ``None`` when the kernel
    could not be built (after warning once); callers then run the plain path. Check
    ``fused_supported`` first: an unsupported input raises. ``backend="inductor"`` forces the Inductor
    CPU kernel (for benchmarks against the C++ one).
    """
    if fn not in FUNCTIONS:
        raise ValueError(f"unknown fused function {fn!r}; valid functions are: {', '.join(FUNCTIONS)}")
    out_dtype = _out_dtype(x, alpha, weight, bias, shift)
    if not fused_supported(x, layout, out_dtype):
        raise RuntimeError(
            f"no fused kernel for a {x.dtype} tensor (output {out_dtype}) on {x.device} with layout {layout!r}; "
            "the CPU kernel takes float32 and bfloat16, the CUDA one also float16 (channels_last only). "
            "Use impl='auto' (plain PyTorch where no kernel serves) or impl='eager'"
        )
    dim = x.shape[-1] if layout == "channels_last" else x.shape[1]
    param = {"device": x.device, "dtype": alpha.dtype}
    weight = torch.ones(dim, **param) if weight is None else weight
    bias = torch.zeros(dim, **param) if bias is None else bias
    shift = torch.zeros(1, **param) if shift is None and fn == "erf" else shift
    name, backend = ("inductor", cpu) if backend == "inductor" else _backend(x.device.type)
    if name == "cpp":
        try:
            cpp.ops()  # compiles or loads the library on the first call
        except Exception as error:  # any failure to build or load it: a fallback below still serves
            _give_up(name, error)
            return _fallback(x, alpha, weight, bias, fn=fn, layout=layout, shift=shift, out_dtype=out_dtype)
    try:
        # Viewed outside the Function: a view made inside it could not be modified in place, as
        # torchvision's ResNet does with its last norm's output (``out += identity``, paper Table 16).
        return _FusedPointwise.apply(x, alpha, shift, weight, bias, fn, layout, out_dtype, backend).view(x.shape)
    except torch._dynamo.exc.BackendCompilerFailed as error:  # Inductor found no working compiler
        _give_up(name, error)
        return None


def _fallback(x, alpha, weight, bias, *, fn, layout, shift, out_dtype) -> torch.Tensor | None:
    """The next backend's result after one gave up, or None (plain PyTorch) where none serves."""
    if not fused_supported(x, layout, out_dtype):
        return None
    return fused_pointwise(x, alpha, weight, bias, fn=fn, layout=layout, shift=shift)


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

    Plain runs for ``impl="eager"``, a device whose backends all failed to build (after
    one warning), and (with ``impl="auto"``) devices outside ``AUTO_DEVICES`` and inputs no kernel
    serves; ``impl="fused"`` raises for those instead. Inside ``torch.compile`` the caller's graph is
    left to the compiler (DyT then uses ``fast_tanh`` so Inductor fuses a cheap tanh into it); the first
    trace says so in the log.
    """
    if impl == "eager":
        return None
    if torch.compiler.is_compiling():
        _announce_compiled()
        return None
    if _backend(x.device.type) is None and _gave_up(x.device.type):
        return None  # it has already warned
    out_dtype = _out_dtype(x, alpha, weight, bias, shift)
    if impl == "auto" and (x.device.type not in AUTO_DEVICES or not fused_supported(x, layout, out_dtype)):
        return None
    return fused_pointwise(x, alpha, weight, bias, fn=fn, layout=layout, shift=shift)


def _gave_up(device_type: str) -> bool:
    names = ("cpp", "inductor") if device_type == "cpu" else (device_type,)
    return all(name in _broken for name in names)


_announced: list[bool] = []


@torch.compiler.assume_constant_result  # runs while Dynamo traces, leaves nothing in the graph
def _announce_compiled() -> bool:
    if not _announced:
        _announced.append(True)
        log.info(
            "dyt: inside torch.compile, DyT/Derf with impl='auto' run as plain expressions that the compiler "
            "fuses (DyT's tanh as fast_tanh, Derf's erf as torch.erf), not the hand-written kernels"
        )
    return True
