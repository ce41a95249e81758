"""Model-level benchmark: train step and inference of ViT-S/16 and small LLaMAs with each norm.

Variants: the model's own norm (LayerNorm for ViT, RMSNorm for LLaMA), DyT plain (``impl=eager``),
DyT fused (``impl=fused``) and, for inference, DyT fused after ``dyt.fold``. All variants of a model
are timed in the same run, interleaved over ``--repeats`` rounds; medians and ratios to the model's
own norm are printed. A train step is forward, cross-entropy, backward and an AdamW step.

Memory of a train step: on CUDA the allocator's peak; on CPU (no allocator statistics) the bytes of
activations autograd saves for backward (parameters excluded), which is what differs between norms.

    python scripts/bench/models.py                          # quick: ViT-S/16 and LLaMA-20M (< 3 min on CPU)
    python scripts/bench/models.py --full                   # + LLaMA-60M and -150M, bigger batches
    python scripts/bench/models.py --device cuda --full --dtype bf16

Never asserted in tests: timings on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dyt

# This script is itself named models.py: take its folder off the path so `models` is the project's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import models  # noqa: E402

# (preset, own norm, batch, sequence length or image size) for the quick and the full runs.
QUICK = [("vit_s", "layernorm", 4, 224), ("llama_20m", "rmsnorm", 4, 256)]
FULL = [
    ("vit_s", "layernorm", 32, 224),
    ("llama_20m", "rmsnorm", 8, 1024),
    ("llama_60m", "rmsnorm", 8, 1024),
    ("llama_150m", "rmsnorm", 4, 1024),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _batch(model: nn.Module, batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and targets of the right kind: images and labels, or tokens and next tokens."""
    if hasattr(model, "patch_embed"):
        return (
            torch.randn(batch, 3, size, size, device=device),
            torch.randint(0, model.num_classes, (batch,), device=device),
        )
    tokens = torch.randint(0, model.vocab_size, (batch, size + 1), device=device)
    return tokens[:, :-1], tokens[:, 1:]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, -2), target.flatten())


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _train_step(model: nn.Module, batch, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, target = batch

    def step() -> None:
        with _autocast(device, dtype):
            loss = _loss(model(inputs), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _inference(model: nn.Module, batch, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            model(batch[0])

    return step


def _train_memory_mib(model: nn.Module, batch, device: torch.device, dtype: torch.dtype) -> float:
    inputs, target = batch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        _train_step(model, batch, device, dtype)()
        return torch.cuda.max_memory_allocated(device) / 2**20
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(device, dtype):
        loss = _loss(model(inputs), target)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values()) / 2**20


def _median_ms(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    for step in steps.values():  # warm-up: kernel compilation, allocator, optimizer state
        step()
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(times) for name, times in samples.items()}


def bench_model(
    preset: str, own_norm: str, batch_size: int, size: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> list[tuple[str, str, float, float, float | None]]:
    """Rows (mode, variant, ms, ratio to the model's own norm, train memory MiB or None)."""
    norms = {
        own_norm: own_norm,
        "dyt plain": {"name": "dyt", "impl": "eager"},
        "dyt fused": {"name": "dyt", "impl": "fused"},
    }
    built = {name: models.create_model(preset, norm=norm).to(device) for name, norm in norms.items()}
    batch = _batch(built[own_norm], batch_size, size, device)
    memory = {name: _train_memory_mib(model.train(), batch, device, dtype) for name, model in built.items()}
    train = _median_ms(
        {name: _train_step(model.train(), batch, device, dtype) for name, model in built.items()}, repeats, device
    )
    folded = copy.deepcopy(built["dyt fused"])
    dyt.fold(folded)
    inference_models = {**built, "dyt fused+folded": folded}
    infer = _median_ms(
        {name: _inference(model.eval(), batch, device, dtype) for name, model in inference_models.items()},
        repeats,
        device,
    )
    rows = [("train step", name, ms, ms / train[own_norm], memory[name]) for name, ms in train.items()]
    rows += [("inference", name, ms, ms / infer[own_norm], None) for name, ms in infer.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more LLaMA sizes and bigger batches")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="bf16: autocast")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    memory_kind = "peak allocated" if device.type == "cuda" else "saved activations"
    print(
        f"# models benchmark: {device}, {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds"
    )
    print(f"| model | batch x size | mode | variant | ms | x own norm | train memory MiB ({memory_kind}) |")
    print("|---|---|---|---|---:|---:|---:|")
    for preset, own_norm, batch_size, size in FULL if args.full else QUICK:
        for mode, name, ms, ratio, mib in bench_model(preset, own_norm, batch_size, size, device, dtype, args.repeats):
            memory = "" if mib is None else f"{mib:.1f}"
            print(
                f"| {preset} | {batch_size} x {size} | {mode} | {name} | {ms:.1f} | {ratio:.2f} | {memory} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
