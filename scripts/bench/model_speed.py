"""Model-level benchmark: train step and inference of ViTs and LLaMAs with each norm, in one interleaved run.

Variants: the model's own norm (LayerNorm for ViT, RMSNorm for LLaMA), DyT plain (``impl=eager``),
DyT fused (``impl=fused``: on CPU the hand-written C++ kernel, on CUDA the Triton one) and, for
inference, DyT fused after ``dyt.fold``. With ``--compile`` the train step of the own norm and of DyT
(``impl=auto``) also runs under ``torch.compile``, and the graph breaks of each compiled forward are
counted (``torch._dynamo.explain``). All variants of a model are timed in the same run, interleaved over
``--repeats`` rounds; medians, throughput (images/s or tokens/s) and ratios to the model's own norm are
printed. A train step is forward, cross-entropy, backward and an AdamW step.

Memory of a train step: on CUDA the allocator's peak during one step above what was allocated before
it; on CPU (no allocator statistics) the bytes of activations autograd saves for backward (parameters
excluded), which is what differs between norms.

    python scripts/bench/model_speed.py                       # quick: ViT-S/16 and LLaMA-20M (< 3 min on CPU)
    python scripts/bench/model_speed.py --full                # + LLaMA-60M and -150M, bigger batches
    python scripts/bench/model_speed.py --device cuda --dtype bf16 --compile --models vit_b:64:224 llama_1b:4:2048

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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dyt  # noqa: E402
import models  # noqa: E402
from scripts.bench.common import DTYPES, add_timing_options, apply_timing_options  # noqa: E402

# (preset, batch, sequence length or image size) for the quick and the full runs.
QUICK = [("vit_s", 4, 224), ("llama_20m", 4, 256)]
FULL = [("vit_s", 32, 224), ("llama_20m", 8, 1024), ("llama_60m", 8, 1024), ("llama_150m", 4, 1024)]


def _own_norm(preset: str) -> str:
    return "rmsnorm" if preset.startswith("llama") else "layernorm"


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


def _train_memory_mib(step: Callable[[], None], model: nn.Module, batch, device: torch.device, dtype) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    inputs, target = batch
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


def graph_breaks(model: nn.Module, inputs: torch.Tensor) -> int:
    """Graph breaks Dynamo finds in ``model``'s forward (0: one graph)."""
    torch._dynamo.reset()
    breaks = torch._dynamo.explain(model)(inputs).graph_break_count
    torch._dynamo.reset()
    return breaks


def _median_ms(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device, clock: Callable[[], float]
) -> dict[str, float]:
    for step in steps.values():  # warm-up: kernel builds and compiles, allocator, optimizer state
        step()
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = clock()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples[name].append((clock() - start) * 1e3)
    return {name: statistics.median(times) for name, times in samples.items()}


def bench_model(
    preset: str,
    batch_size: int,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    compile: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Rows {mode, variant, ms, x_own, items_per_s, memory_mib, graph_breaks} for one model."""
    own = _own_norm(preset)
    norms = {own: own, "dyt plain": {"name": "dyt", "impl": "eager"}, "dyt fused": {"name": "dyt", "impl": "fused"}}
    if compile:
        norms["dyt auto"] = {"name": "dyt", "impl": "auto"}
    built = {name: models.create_model(preset, norm=norm).to(device) for name, norm in norms.items()}
    batch = _batch(built[own], batch_size, size, device)
    train_models = {name: model for name, model in built.items() if name != "dyt auto"}
    breaks: dict[str, int] = {}
    if compile:
        for name in (own, "dyt auto"):
            breaks[f"{name} compiled"] = graph_breaks(built[name], batch[0])
            train_models[f"{name} compiled"] = torch.compile(built[name])
    steps = {name: _train_step(model.train(), batch, device, dtype) for name, model in train_models.items()}
    for step in steps.values():  # first steps: compiles, optimizer state
        step()
    memory = {name: _train_memory_mib(steps[name], model, batch, device, dtype) for name, model in train_models.items()}
    train = _median_ms(steps, repeats, device, clock)
    folded = copy.deepcopy(built["dyt fused"])
    dyt.fold(folded)
    inference_models = {name: built[name] for name in (own, "dyt plain", "dyt fused")} | {"dyt fused+folded": folded}
    infer = _median_ms(
        {name: _inference(model.eval(), batch, device, dtype) for name, model in inference_models.items()},
        repeats,
        device,
        clock,
    )
    items = batch_size * (1 if hasattr(built[own], "patch_embed") else size)
    rows = []
    for mode, times, reference in (("train step", train, own), ("inference", infer, own)):
        for name, ms in times.items():
            base = times[f"{own} compiled"] if name.endswith("compiled") else times[reference]
            rows.append(
                {
                    "model": preset,
                    "batch": f"{batch_size} x {size}",
                    "mode": mode,
                    "variant": name,
                    "ms": ms,
                    "x_own": ms / base,
                    "items_per_s": items / ms * 1e3,
                    "memory_mib": memory.get(name) if mode == "train step" else None,
                    "graph_breaks": breaks.get(name) if mode == "train step" else None,
                }
            )
    return rows


def _parse_model(text: str) -> tuple[str, int, int]:
    try:
        preset, batch, size = text.split(":")
        return preset, int(batch), int(size)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not PRESET:BATCH:SIZE, e.g. vit_b:64:224") from None


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print a markdown table, return its rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more LLaMA sizes and bigger batches")
    parser.add_argument("--models", nargs="+", type=_parse_model, help="explicit PRESET:BATCH:SIZE entries")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    add_timing_options(parser)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="bf16: autocast")
    parser.add_argument("--compile", action="store_true", help="also the torch.compile'd train step")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    args = parser.parse_args(argv)
    clock = apply_timing_options(args)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    memory_kind = "step peak above resident" if device.type == "cuda" else "saved activations"
    print(
        f"# model benchmark: {device}, {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds, {args.clock} clock; "
        "compiled variants are compared with the compiled own norm"
    )
    print(f"| model | batch x size | mode | variant | ms | x own norm | items/s | train MiB ({memory_kind}) | breaks |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for preset, batch_size, size in args.models or (FULL if args.full else QUICK):
        for row in bench_model(preset, batch_size, size, device, dtype, args.repeats, args.compile, clock):
            rows.append(row)
            mib = "" if row["memory_mib"] is None else f"{row['memory_mib']:.1f}"
            breaks = "" if row["graph_breaks"] is None else str(row["graph_breaks"])
            print(
                f"| {preset} | {row['batch']} | {row['mode']} | {row['variant']} | {row['ms']:.1f} | "
                f"{row['x_own']:.2f} | {row['items_per_s']:.0f} | {mib} | {breaks} |",
                flush=True,
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
