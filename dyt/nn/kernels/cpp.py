"""The hand-written C++ CPU kernels of the fused point-wise norms (``pointwise_cpu.cpp``), built on first use.

Why hand-written: Inductor's kernel (``kernels.cpu``) splits the backward into two loops that store tanh
in between and costs ~2x a LayerNorm on CPU; here the forward is one pass and the backward one pass
that reads ``x`` and ``grad_y`` once, writes ``grad_x`` once and keeps per-thread partial sums for
``alpha``/``shift``/``weight``/``bias`` (finished in fp64 by one small sum over threads).

Build: ``torch.utils.cpp_extension.load`` compiles the file once per source and build flags into
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); later processes load the cached
library in well under a second. The extension's name carries the CPU capability and a hash of the
source, the flags and the torch version (:func:`build_key`, e.g. ``dyt_pointwise_cpu_avx2_3f9c...``),
and it is compiled from a copy of the source inside its own build directory: two checkouts (or an
installed copy and a clone) with the same source share one build and never rebuild each other's, and
different sources never share one. Concurrent first builds (several ranks or nodes on a shared file
system) are serialised by torch's lock file in that directory. It needs a C++17 compiler and ninja.
``dyt.nn.kernels`` catches a failed build, warns once and falls back.

fp32 and bf16 inputs (computed in fp32, rounded once); other dtypes go to another path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("pointwise_cpu.cpp")
DTYPES = (torch.float32, torch.bfloat16)
# ATen's Vectorized<float> picks its instruction set from these macros; the flags match what PyTorch
# itself was dispatched to on this CPU (torch.backends.cpu.get_cpu_capability()).
_ISA_FLAGS = {
    "AVX512": [
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
        "-mavx512f",
        "-mavx512dq",
        "-mavx512vl",
        "-mavx512bw",
        "-mfma",
    ],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}
_ops = None
build_seconds: float | None = None  # wall time of the load in this process (compile, or cache hit)


def _capability() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _ISA_FLAGS else "DEFAULT"


def build_key(source: Path, flags: list[str]) -> str:
    """Hash of the source's bytes, the build flags and the torch version (not of the source's path)."""
    h = hashlib.sha256(source.read_bytes())
    h.update("\0".join([*flags, torch.__version__]).encode())
    return h.hexdigest()[:16]


def stage_source(source: Path, directory: Path) -> Path:
    """``source`` copied to ``directory/src/`` (atomically, and only when absent or different), so every
    checkout compiles the same path and ninja sees nothing to rebuild."""
    staged = directory / "src" / source.name
    data = source.read_bytes()
    if not staged.is_file() or staged.read_bytes() != data:
        staged.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged.with_name(f".{staged.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, staged)
    return staged


def ops():
    """``torch.ops.dyt_kernels``, building or loading the library on the first call (raises if it cannot)."""
    global _ops, build_seconds
    if _ops is None:
        cpp_log = logging.getLogger("torch.utils.cpp_extension")
        level, _ = cpp_log.level, cpp_log.setLevel(logging.ERROR)  # its import warns "No CUDA runtime" on CPU
        try:
            from torch.utils import cpp_extension
        finally:
            cpp_log.setLevel(level)

        capability = _capability()
        cflags, ldflags = ["-O3", "-fopenmp", *_ISA_FLAGS.get(capability, [])], ["-fopenmp"]
        name = f"dyt_pointwise_cpu_{capability.lower()}_{build_key(SOURCE, cflags + ldflags)}"
        directory = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
        start = time.perf_counter()
        cpp_extension.load(
            name=name,
            sources=[str(stage_source(SOURCE, directory))],
            extra_cflags=cflags,
            extra_ldflags=ldflags,  # resolves to the OpenMP runtime torch has already loaded
            build_directory=str(directory),
            is_python_module=False,
            verbose=os.environ.get("DYT_KERNEL_VERBOSE") == "1",
        )
        build_seconds = time.perf_counter() - start
        _ops = torch.ops.dyt_kernels
    return _ops


def _as_float(t: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros(1) if t is None else t.detach().to(torch.float32).contiguous()


def forward(fn: str, x, alpha, shift, weight, bias, layout: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``weight * fn(alpha * x [+ shift]) + bias`` for a contiguous (rows, C) or (N, C, S) ``x``."""
    # Mixed precision (a bf16 input with fp32 parameters gives an fp32 output, as the plain expression
    # does): the kernel reads and writes one dtype, so the input is converted first.
    x = x.to(out_dtype)
    return ops().forward(x, *map(_as_float, (alpha, shift, weight, bias)), fn == "erf", layout == "channels_first")


def backward(fn: str, g, x, alpha, shift, weight, layout: str):
    """Grads of (x, alpha, shift or None, weight, bias); ``g`` has the output's dtype, ``x`` the input's."""
    C = weight.numel()
    gx, partials = ops().backward(
        g, x.to(g.dtype), *map(_as_float, (alpha, shift, weight)), fn == "erf", layout == "channels_first"
    )
    sums = partials.sum(0).float()  # fp64 per-thread partials -> totals
    gshift = None if shift is None else sums[2 * C + 1 :]
    return gx.to(x.dtype), sums[2 * C : 2 * C + 1], gshift, sums[:C], sums[C : 2 * C]
