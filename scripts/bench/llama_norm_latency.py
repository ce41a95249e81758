"""Paper Tables 14 and 15: time of a LLaMA with RMSNorm, DyT or Identity, in the norm layers and in total.

For each norm, the total time of N forward passes (inference, no_grad) and of N forward+backward passes
(training) on one sequence, after N untimed warm-up passes ([P2] App. C; official
other_tasks/Efficiency/benchmark.py). Two modes: ``eager`` (Table 14) and ``compiled``, where only the
norm layers go through ``torch.compile`` (Table 15; compiling the whole model was slower in the paper).

"model" is the wall time of the whole pass (the device synchronised at both ends). "layer" is measured,
not estimated, in a second, instrumented run: every norm layer is wrapped so that its forward is
bracketed by timestamps (CUDA events on GPU, ``perf_counter`` on CPU) and its backward by two
autograd markers around it, which stamp when the gradient reaches the layer's output and when it leaves
its input. The markers wrap all three norms alike (Identity's "layer" time is the markers' own cost).

DyT is the plain PyTorch layer (``impl=eager``) with no bias, as the paper's benchmark; every model has
``embed_scale=none`` so that the norms are the only difference.

    python scripts/bench/llama_norm_latency.py                      # CPU defaults, a few minutes
    python scripts/bench/llama_norm_latency.py --paper              # 7B, seq 4096, bf16, 100+100 passes, GPU
    python scripts/bench/llama_norm_latency.py --paper --iters 10 --warmup 5    # the same setting, shorter
    python scripts/bench/llama_norm_latency.py --model llama_60m --seq-len 1024 --iters 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import models  # noqa: E402
from scripts.bench import common  # noqa: E402

NORMS = {"rmsnorm": {"name": "rmsnorm"}, "dyt": {"name": "dyt", "impl": "eager"}, "identity": None}
MODES = ("eager", "compiled")
DTYPES = {**common.DTYPES, "fp16": torch.float16}


# ---- measuring time inside the norm layers ---------------------------------------------------------
class NormClock:
    """Collects (start, end) stamps of every norm call, forward and backward, and sums them."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = False
        self.forward: list[list] = []
        self.backward: list[list] = []

    def stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, pairs: list[list]) -> float:
        if self.cuda:
            return sum(start.elapsed_time(end) for start, end in pairs) / 1000.0
        return sum(end - start for start, end in pairs)

    def reset(self) -> None:
        self.forward, self.backward = [], []

    def seconds(self) -> float:
        """Seconds spent in the norm layers since ``reset`` (forward plus backward)."""
        if self.cuda:
            torch.cuda.synchronize()
        done = [p for p in self.backward if None not in p]
        return self._seconds(self.forward) + self._seconds(done)


class _BackwardStamp(torch.autograd.Function):
    """Identity whose backward writes a timestamp into ``pair[slot]``."""

    @staticmethod
    def forward(ctx, x, clock, pair, slot):
        ctx.clock, ctx.pair, ctx.slot = clock, pair, slot
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.pair[ctx.slot] = ctx.clock.stamp()
        return grad, None, None, None


class TimedNorm(nn.Module):
    """A norm layer (or Identity) whose forward and backward time ``clock`` records when enabled."""

    def __init__(self, inner: nn.Module, clock: NormClock) -> None:
        super().__init__()
        self.inner, self.clock = inner, clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.clock.enabled:
            return self.inner(x)
        pair = [None, None]  # backward: gradient reaches the output (start), leaves the input (end)
        x = _BackwardStamp.apply(x, self.clock, pair, 1)
        start = self.clock.stamp()
        y = self.inner(x)
        self.clock.forward.append([start, self.clock.stamp()])
        if y.requires_grad:
            self.clock.backward.append(pair)
        return _BackwardStamp.apply(y, self.clock, pair, 0)


# ---- the benchmark -----------------------------------------------------------------------------
def build(preset: str, norm: str, mode: str, dtype: torch.dtype, device: torch.device, clock: NormClock) -> nn.Module:
    """The preset with ``norm`` (Identity: RMSNorm's modules replaced), each norm layer timed and, in
    ``compiled`` mode, compiled on its own. Weights are random (timing does not depend on them)."""
    with torch.device("meta"):
        model = models.create_model(preset, norm=NORMS[norm] or NORMS["rmsnorm"], embed_scale="none")
    norm_cls = type(model.norm)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, norm_cls):
                inner = nn.Identity() if NORMS[norm] is None else child
                if mode == "compiled":
                    inner.compile()
                setattr(parent, name, TimedNorm(inner, clock))
    model.to_empty(device=device)
    model.reset_parameters()
    return model.to(dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_passes(model: nn.Module, tokens: torch.Tensor, n: int, train: bool) -> None:
    for _ in range(n):
        if train:
            logits = model(tokens[:, :-1])
            F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(tokens[:, :-1])


def measure(
    model: nn.Module, tokens: torch.Tensor, clock: NormClock, iters: int, warmup: int, train: bool
) -> tuple[float, float]:
    """(model seconds, layer seconds) of ``iters`` passes, each after ``warmup`` untimed passes."""
    device = tokens.device
    clock.enabled = False
    run_passes(model, tokens, warmup, train)
    sync(device)
    start = time.perf_counter()
    run_passes(model, tokens, iters, train)
    sync(device)
    model_s = time.perf_counter() - start
    clock.enabled = True
    run_passes(model, tokens, 1, train)  # instrumented warm-up (the markers change compiled graphs' inputs)
    clock.reset()
    run_passes(model, tokens, iters, train)
    layer_s = clock.seconds()
    clock.enabled = False
    clock.reset()
    return model_s, layer_s


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's setting: llama2_7b, seq 4096, bf16, 100 warm-up + 100 timed passes, on the GPU",
    )
    p.add_argument("--model", default="llama_20m", help="a LLaMA preset (default llama_20m)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--iters", type=int, help="timed passes of each kind (default 10; --paper: 100)")
    p.add_argument("--warmup", type=int, help="untimed passes before each timing (default 3; --paper: 100)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--norms", nargs="+", choices=list(NORMS), default=list(NORMS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.paper:  # an explicit --iters / --warmup still wins (a shorter check of the same setting)
        args.model, args.seq_len, args.dtype = "llama2_7b", 4096, "bf16"
        if args.device != "cuda":
            p.error("--paper needs a CUDA device (7B in bf16, as the paper's H100 run)")
    args.iters = args.iters or (100 if args.paper else 10)
    args.warmup = args.warmup or (100 if args.paper else 3)

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    rows = []
    for mode in args.modes:
        for norm in args.norms:
            clock = NormClock(device)
            model = build(args.model, norm, mode, dtype, device, clock)
            tokens = torch.randint(0, model.vocab_size, (1, args.seq_len + 1), device=device)
            row = {
                "model": args.model,
                "norm": norm,
                "mode": mode,
                "seq_len": args.seq_len,
                "iters": args.iters,
                "dtype": args.dtype,
                "device": str(device),
            }
            row["inference_model_s"], row["inference_layer_s"] = measure(
                model, tokens, clock, args.iters, args.warmup, train=False
            )
            row["training_model_s"], row["training_layer_s"] = measure(
                model, tokens, clock, args.iters, args.warmup, train=True
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


def report(rows: list[dict]) -> None:
    """The paper's table layout per mode, and the DyT / RMSNorm ratios."""
    keys = ("inference_layer_s", "inference_model_s", "training_layer_s", "training_model_s")
    for mode in MODES:
        by_norm = {r["norm"]: r for r in rows if r["mode"] == mode}
        if not by_norm:
            continue
        print(
            f"\n{mode}: seconds for {rows[0]['iters']} passes ({rows[0]['model']}, seq {rows[0]['seq_len']}, "
            f"{rows[0]['dtype']}, {rows[0]['device']})"
        )
        print(f"{'':10}" + "".join(f"{k.removesuffix('_s'):>18}" for k in keys))
        for norm, r in by_norm.items():
            print(f"{norm:10}" + "".join(f"{r[k]:18.3f}" for k in keys))
        if "dyt" in by_norm and "rmsnorm" in by_norm:
            ratios = [by_norm["dyt"][k] / by_norm["rmsnorm"][k] for k in keys]
            print(f"{'DyT/RMS':10}" + "".join(f"{v:18.3f}" for v in ratios))


if __name__ == "__main__":
    main()
