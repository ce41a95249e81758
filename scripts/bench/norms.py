"""Kernel-level benchmark: the DyT/Derf kernels against LayerNorm, RMSNorm, ATen's sigmoid and a copy.

Every variant of one (shape, dtype, pass) cell is timed in the same run, interleaved round-robin over
``--repeats`` rounds; the median per variant is printed with its ratio to LayerNorm and to a plain
tensor copy (the memory roofline: read the input once, write a new output once). For forward+backward
the copy reference is a ``clone`` with autograd (one copy each way) and every variant's backward
includes its parameter gradients.

Variants: ``copy``; ``LayerNorm`` (``F.layer_norm``, ATen's fused kernel); ``RMSNorm`` (``dyt.nn``'s,
what the LLaMA models run); ``sigmoid`` (ATen's vectorised ``torch.sigmoid``, a transcendental at
memory speed); ``DyT kernel`` / ``Derf kernel`` (``impl="fused"``: on CPU the hand-written C++ kernel,
on CUDA the Triton one); ``DyT inductor`` (CPU only: the previous, Inductor-generated fused kernel);
``DyT plain`` (``impl="eager"``: exact ``torch.tanh``).

    python scripts/bench/norms.py                 # quick: 8K x 768 and 2K x 4096, fp32 and bf16 (~2 min on CPU)
    python scripts/bench/norms.py --full          # tokens {2K, 8K, 16K} x width {768, 1024, 4096}
    python scripts/bench/norms.py --device cuda --full

Targets (CPU, 8192 x 768 fp32): DyT kernel forward <= 1.2x LayerNorm, forward+backward <= 1.0x.
Never asserted in tests: timings on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dyt.nn import Derf, DyT, RMSNorm  # noqa: E402
from dyt.nn.kernels import fused_pointwise  # noqa: E402
from scripts.bench.common import DTYPES, add_timing_options, apply_timing_options  # noqa: E402

QUICK_SHAPES = [(8192, 768), (2048, 4096)]  # (8, 1024, 768) as tokens x width, and a wide layer
FULL_SHAPES = [(tokens, width) for tokens in (2048, 8192, 16384) for width in (768, 1024, 4096)]
TARGET_SHAPE, TARGETS = (8192, 768), {"fwd": 1.2, "fwd+bwd": 1.0}  # DyT kernel / LayerNorm, fp32, CPU


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory instead of unmapping it (as jemalloc or tcmalloc would, which
    PyTorch's CPU performance guide recommends). Otherwise every large output is fresh memory whose
    first touch page-faults, which costs about as much as a DyT or LayerNorm pass and varies with the
    allocator's history. False where the C library is not glibc."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = getattr(libc, "mallopt", None)
    m_trim_threshold, m_mmap_max = -1, -4  # glibc <malloc.h>
    return bool(mallopt and mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _variants(width: int, device: torch.device, dtype: torch.dtype) -> dict[str, Callable]:
    """name -> function of the input; parameters in the input's dtype and requiring grad, as in a model."""

    def param(value: float, n: int) -> torch.Tensor:
        return torch.full((n,), value, device=device, dtype=dtype, requires_grad=True)

    ln_weight, ln_bias = param(1.0, width), param(0.0, width)
    rms = RMSNorm(width).to(device, dtype)
    dyt, derf, plain = (
        m.to(device, dtype) for m in (DyT(width, impl="fused"), Derf(width, impl="fused"), DyT(width, impl="eager"))
    )
    variants = {
        "copy": torch.clone,
        "LayerNorm": lambda x: F.layer_norm(x, (width,), ln_weight, ln_bias),
        "RMSNorm": rms,
        "sigmoid": torch.sigmoid,
        "DyT kernel": dyt,
        "Derf kernel": derf,
    }
    if device.type == "cpu":
        variants["DyT inductor"] = lambda x: fused_pointwise(
            x, dyt.alpha, dyt.weight, dyt.bias, fn="tanh", layout="channels_last", backend="inductor"
        )
    variants["DyT plain"] = plain
    return variants


def _step(fn: Callable, x: torch.Tensor, grad: torch.Tensor | None) -> Callable[[], None]:
    # Every variant allocates its outputs (as in a model), the copy and sigmoid references included.
    if grad is None:
        return lambda: fn(x)
    return lambda: fn(x).backward(grad)


def _time(step: Callable[[], None], iters: int, device: torch.device, clock: Callable[[], float]) -> float:
    _sync(device)
    start = clock()
    for _ in range(iters):
        step()
    _sync(device)
    return (clock() - start) / iters * 1e3


def bench_cell(
    tokens: int,
    width: int,
    dtype: torch.dtype,
    backward: bool,
    device: torch.device,
    repeats: int,
    iters: int,
    only: list[str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median ms per call of every variant (or those in ``only``) on a (tokens, width) tensor."""
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=backward)
    grad = torch.randn_like(x) if backward else None
    variants = _variants(width, device, dtype)
    if only:
        unknown = set(only) - set(variants)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; valid variants are: {', '.join(variants)}")
        variants = {n: fn for n, fn in variants.items() if n in {"copy", "LayerNorm", *only}}
    with torch.set_grad_enabled(backward):
        steps = {name: _step(fn, x, grad) for name, fn in variants.items()}
        for step in steps.values():  # warm-up: kernel builds and compiles, allocator, caches
            for _ in range(2):
                step()
        samples: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(repeats):
            for name, step in steps.items():
                samples[name].append(_time(step, iters, device, clock))
    return {name: statistics.median(times) for name, times in samples.items()}


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        tokens, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not TOKENSxWIDTH, e.g. 8192x768") from None
    return tokens, width


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print a markdown table, return its rows (one per cell and variant)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full shape grid (2K..16K tokens x 768..4096)")
    parser.add_argument("--shapes", nargs="+", type=_parse_shape, help="explicit TOKENSxWIDTH shapes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    add_timing_options(parser)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument(
        "--page-faults", action="store_true", help="leave glibc's malloc as is (outputs fault in fresh pages)"
    )
    parser.add_argument("--variants", nargs="+", help="only these variants (LayerNorm and copy are always run)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds; the median is reported")
    parser.add_argument("--iters", type=int, default=5, help="calls per timed sample")
    args = parser.parse_args(argv)
    clock = apply_timing_options(args)
    device = torch.device(args.device)
    shapes = args.shapes or (FULL_SHAPES if args.full else QUICK_SHAPES)
    kept = device.type == "cpu" and not args.page_faults and keep_freed_memory()
    print(
        f"# norms benchmark: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved rounds x {args.iters} calls, {args.clock} clock, "
        f"malloc {'keeps freed memory' if kept else 'as is'}; ms (x LayerNorm)",
        flush=True,
    )
    rows, header = [], None
    for tokens, width in shapes:
        for dtype_name in args.dtypes:
            for backward in (False, True):
                times = bench_cell(
                    tokens, width, DTYPES[dtype_name], backward, device, args.repeats, args.iters, args.variants, clock
                )
                if header is None:
                    header = list(times)
                    print("| tokens x width | dtype | pass | " + " | ".join(header) + " |")
                    print("|---|---|---|" + "---:|" * len(header))
                pass_name = "fwd+bwd" if backward else "fwd"
                cells = [f"{times[n]:.3f} ({times[n] / times['LayerNorm']:.2f})" for n in header]
                print(f"| {tokens} x {width} | {dtype_name} | {pass_name} | " + " | ".join(cells) + " |", flush=True)
                for name, ms in times.items():
                    rows.append(
                        {
                            "tokens": tokens,
                            "width": width,
                            "dtype": dtype_name,
                            "pass": pass_name,
                            "variant": name,
                            "ms": ms,
                            "x_layernorm": ms / times["LayerNorm"],
                            "x_copy": ms / times["copy"],
                        }
                    )
    _print_targets(rows, device)
    return rows


def _print_targets(rows: list[dict], device: torch.device) -> None:
    """The issue's targets at 8192 x 768 fp32, met or missed, where that cell was run."""
    for pass_name, target in TARGETS.items():
        match = [
            r
            for r in rows
            if (r["tokens"], r["width"]) == TARGET_SHAPE
            and r["dtype"] == "fp32"
            and r["pass"] == pass_name
            and r["variant"] == "DyT kernel"
        ]
        if match:
            ratio = match[0]["x_layernorm"]
            verdict = "met" if ratio <= target else "MISSED"
            print(
                f"target {device} 8192 x 768 fp32 {pass_name}: "
                f"DyT kernel {ratio:.2f}x LayerNorm (<= {target}): {verdict}"
            )


if __name__ == "__main__":
    main()
