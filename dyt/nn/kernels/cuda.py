"""CUDA kernels for the fused point-wise norms, written in Triton (channels_last tensors as (rows, C)).

Forward: one flat pass, ``y = weight[c] * f(alpha * x + shift) + bias[c]`` computed in fp32 and stored
in the output dtype. Backward: one pass over (rows, C) tiles that recomputes ``f`` from ``x``, stores
``grad_x`` and keeps per-column partial sums for ``weight``, ``bias``, ``alpha`` and ``shift`` in
registers; each program writes its partials once, and a small deterministic ``sum`` over programs
finishes the reductions (no atomics). tanh is the same rational as on CPU (``kernels.cpu``), so both
devices give the same values up to rounding.

Setting ``TRITON_INTERPRET=1`` before import runs these kernels on CPU tensors through Triton's
interpreter, which is how they are tested on machines without a GPU.
"""

from __future__ import annotations

import os

import torch

from dyt.nn.kernels.cpu import _TANH_CLAMP, _TANH_P, _TANH_Q, _TWO_OVER_SQRT_PI

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_FWD_BLOCK = 2048
_BWD_BLOCK_R, _BWD_BLOCK_C = 32, 128


def available() -> bool:
    """Triton is importable and can launch: a CUDA device, or the interpreter."""
    return triton is not None and (_INTERPRET or torch.cuda.is_available())


if triton is not None:
    # Triton reads module globals only as constexpr.
    P0, P1, P2, P3, P4 = (tl.constexpr(c) for c in _TANH_P)
    Q0, Q1, Q2, Q3, Q4 = (tl.constexpr(c) for c in _TANH_Q)
    CLAMP = tl.constexpr(_TANH_CLAMP)
    TWO_OVER_SQRT_PI = tl.constexpr(_TWO_OVER_SQRT_PI)

    @triton.jit
    def _fast_tanh(z):
        z = tl.minimum(tl.maximum(z, -CLAMP), CLAMP)
        s = z * z
        p = (((P4 * s + P3) * s + P2) * s + P1) * s + P0
        q = (((Q4 * s + Q3) * s + Q2) * s + Q1) * s + Q0
        return tl.minimum(tl.maximum(z * p / q, -1.0), 1.0)

    @triton.jit
    def _squash(z, IS_ERF: tl.constexpr):
        if IS_ERF:
            f = tl.math.erf(z)
        else:
            f = _fast_tanh(z)
        return f

    @triton.jit
    def _forward_kernel(
        x_ptr, y_ptr, alpha_ptr, shift_ptr, w_ptr, b_ptr, n, C, IS_ERF: tl.constexpr, BLOCK: tl.constexpr
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        c = offs % C
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(alpha_ptr).to(tl.float32) * x
        if IS_ERF:
            z += tl.load(shift_ptr).to(tl.float32)
        y = w * _squash(z, IS_ERF) + b
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_kernel(
        g_ptr,
        x_ptr,
        gx_ptr,
        alpha_ptr,
        shift_ptr,
        w_ptr,
        pw_ptr,
        pb_ptr,
        pa_ptr,
        ps_ptr,
        R,
        C,
        rows_per_program,
        IS_ERF: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        pid_r, pid_c = tl.program_id(0), tl.program_id(1)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < C
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        alpha = tl.load(alpha_ptr).to(tl.float32)
        shift = 0.0
        if IS_ERF:
            shift = tl.load(shift_ptr).to(tl.float32)
        acc_w = tl.zeros((BLOCK_C,), tl.float32)
        acc_b = tl.zeros((BLOCK_C,), tl.float32)
        acc_a = tl.zeros((BLOCK_C,), tl.float32)
        acc_s = tl.zeros((BLOCK_C,), tl.float32)
        row0 = pid_r.to(tl.int64) * rows_per_program
        for r in range(0, rows_per_program, BLOCK_R):
            rows = row0 + r + tl.arange(0, BLOCK_R)
            mask = ((rows < R) & (rows < row0 + rows_per_program))[:, None] & col_mask[None, :]
            offs = rows[:, None] * C + cols[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            z = alpha * x + shift
            f = _squash(z, IS_ERF)
            if IS_ERF:
                df = TWO_OVER_SQRT_PI * tl.exp(-z * z)
            else:
                df = 1.0 - f * f
            gz = g * w[None, :] * df
            tl.store(gx_ptr + offs, (alpha * gz).to(gx_ptr.dtype.element_ty), mask=mask)
            acc_w += tl.sum(g * f, axis=0)
            acc_b += tl.sum(g, axis=0)
            acc_a += tl.sum(gz * x, axis=0)
            acc_s += tl.sum(gz, axis=0)
        part = pid_r.to(tl.int64) * C + cols
        tl.store(pw_ptr + part, acc_w, mask=col_mask)
        tl.store(pb_ptr + part, acc_b, mask=col_mask)
        tl.store(pa_ptr + part, acc_a, mask=col_mask)
        tl.store(ps_ptr + part, acc_s, mask=col_mask)


def forward(fn: str, x, alpha, shift, weight, bias, layout: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``weight * fn(alpha * x [+ shift]) + bias`` for a contiguous (rows, C) ``x``."""
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    n = x.numel()
    shift = alpha if shift is None else shift  # not read unless erf
    if n:  # Triton refuses an empty grid
        _forward_kernel[(triton.cdiv(n, _FWD_BLOCK),)](
            x, y, alpha, shift, weight, bias, n, x.shape[1], IS_ERF=fn == "erf", BLOCK=_FWD_BLOCK
        )
    return y


def _rows_per_program(R: int, col_blocks: int, device: torch.device) -> int:
    # Enough programs to fill the GPU ~4 times over; more rows per program means fewer partial sums.
    sms = 4 if _INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count
    row_programs = max(1, 4 * sms // col_blocks)
    return max(_BWD_BLOCK_R, triton.cdiv(triton.cdiv(R, row_programs), _BWD_BLOCK_R) * _BWD_BLOCK_R)


def backward(fn: str, g, x, alpha, shift, weight, layout: str):
    """Grads of (x, alpha, shift or None, weight, bias) for contiguous (rows, C) ``g`` and ``x``."""
    R, C = x.shape
    col_blocks = triton.cdiv(C, _BWD_BLOCK_C)
    rows = _rows_per_program(R, col_blocks, x.device)
    row_programs = triton.cdiv(R, rows)
    gx = torch.empty_like(x)
    partials = torch.empty(4, row_programs, C, device=x.device, dtype=torch.float32)
    is_erf = fn == "erf"
    launch = _backward_kernel[(row_programs, col_blocks)] if R else lambda *args, **kwargs: None  # empty grid
    launch(
        g,
        x,
        gx,
        alpha,
        alpha if shift is None else shift,
        weight,
        *partials,
        R,
        C,
        rows,
        IS_ERF=is_erf,
        BLOCK_R=_BWD_BLOCK_R,
        BLOCK_C=_BWD_BLOCK_C,
    )
    gweight, gbias, galpha, gshift = partials.sum(1)
    return gx, galpha.sum().view(1), gshift.sum().view(1) if is_erf else None, gweight, gbias
