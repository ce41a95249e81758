"""Mixed precision: bf16 autocast on GPU, fp32 on CPU by default; fp16 adds a gradient scaler."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device, tf32: bool = True) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; other values are checked and returned.
    On CUDA, ``tf32`` lets fp32 matmuls and convolutions use TF32 (the paper's ImageNet runs: AMP off,
    TF32 on)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown trainer.precision {precision!r}; valid choices are: auto, {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The forward-pass context: ``torch.autocast`` for bf16/fp16, nothing for fp32."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
