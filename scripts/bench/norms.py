"""Kernel-level benchmark: DyT (fused, plain, torch.compile'd) against LayerNorm, RMSNorm and a copy.

Every variant of one (shape, dtype, pass) cell is timed in the same run, interleaved round-robin over
``--repeats`` rounds, and the median per variant is reported with its ratio to LayerNorm and to a
plain tensor copy (the memory roofline: read the input once, write the output once). For
forward+backward the copy reference is a ``clone`` with autograd (one copy each way).

    python scripts/bench/norms.py                 # quick: (8*1024) x 768, fp32 and bf16 (< 3 min on CPU)
    python scripts/bench/norms.py --full          # tokens {2K, 8K, 16K} x width {768, 1024, 4096}
    python scripts/bench/norms.py --device cuda --full

Never asserted in tests: timings on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dyt.nn import DyT, LayerNorm, RMSNorm

QUICK_SHAPES = [(8 * 1024, 768)]  # the target tensor, (8, 1024, 768), as tokens x width
FULL_SHAPES = [(tokens, width) for tokens in (2048, 8192, 16384) for width in (768, 1024, 4096)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _variants(width: int, device: torch.device, dtype: torch.dtype) -> dict[str, Callable | None]:
    """name -> module (None for the copy reference); parameters in the input's dtype."""

    def build(module: nn.Module) -> nn.Module:
        return module.to(device, dtype)

    plain = build(DyT(width, impl="eager"))
    return {
        "copy": None,
        "LayerNorm": build(LayerNorm(width)),
        "RMSNorm": build(RMSNorm(width)),
        "DyT fused": build(DyT(width, impl="fused")),
        "DyT plain": plain,
        "DyT compiled": torch.compile(plain, dynamic=False),
    }


def _step(module: Callable | None, x: torch.Tensor, grad: torch.Tensor | None) -> Callable[[], None]:
    if grad is None:
        out = torch.empty_like(x)
        if module is None:
            return lambda: out.copy_(x)
        return lambda: module(x)
    if module is None:
        return lambda: x.clone().backward(grad)
    return lambda: module(x).backward(grad)


def _time(step: Callable[[], None], iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1e3


def bench_cell(
    tokens: int, width: int, dtype: torch.dtype, backward: bool, device: torch.device, repeats: int, iters: int
) -> dict[str, float]:
    """Median ms per call of every variant on a (tokens, width) tensor."""
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=backward)
    variants = _variants(width, device, dtype)
    grad = torch.randn_like(x) if backward else None
    steps = {name: _step(module, x, grad) for name, module in variants.items()}
    for step in steps.values():  # warm-up: compiles, allocator, caches
        for _ in range(2):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(_time(step, iters, device))
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full shape grid (2K..16K tokens x 768..4096)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds; the median is reported")
    parser.add_argument("--iters", type=int, default=5, help="calls per timed sample")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"# norms benchmark: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} rounds x {args.iters} calls"
    )
    print("| tokens x width | dtype | pass | variant | ms | x LayerNorm | x copy |")
    print("|---|---|---|---|---:|---:|---:|")
    for tokens, width in FULL_SHAPES if args.full else QUICK_SHAPES:
        for dtype_name in args.dtypes:
            for backward in (False, True):
                times = bench_cell(tokens, width, DTYPES[dtype_name], backward, device, args.repeats, args.iters)
                for name, ms in times.items():
                    print(
                        f"| {tokens} x {width} | {dtype_name} | {'fwd+bwd' if backward else 'fwd'} | {name} | "
                        f"{ms:.3f} | {ms / times['LayerNorm']:.2f} | {ms / times['copy']:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
