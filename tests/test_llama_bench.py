"""The paper's latency benchmark (scripts/bench/llama_norm_latency.py): norm-layer time is measured."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/bench/llama_norm_latency.py"
spec = importlib.util.spec_from_file_location("llama_norm_latency", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

PAUSE = 0.01  # inside the layer, forward and backward
GAP = 0.3  # outside the layer, between forward and backward


class _SlowBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(PAUSE)
        return grad


class SlowNorm(nn.Module):
    """A stand-in norm that spends PAUSE seconds in its forward and PAUSE in its backward."""

    def forward(self, x):
        time.sleep(PAUSE)
        return _SlowBackward.apply(x)


def test_layer_time_counts_forward_and_backward_inside_the_layer_only():
    clock = bench.NormClock(torch.device("cpu"))
    layer = bench.TimedNorm(SlowNorm(), clock)
    x = torch.randn(4, 8, requires_grad=True)
    layer(x).sum().backward()  # disabled: nothing recorded
    assert clock.seconds() == 0.0
    clock.enabled = True
    y = layer(x)
    time.sleep(GAP)
    (y * 2).sum().backward()
    assert 2 * PAUSE <= clock.seconds() < 2 * PAUSE + GAP / 2  # slack for sleeps overshooting on a busy machine
    assert torch.equal(x.grad, torch.full_like(x, 3.0))  # the markers leave gradients unchanged


def test_identity_rows_replace_every_norm():
    clock = bench.NormClock(torch.device("cpu"))
    model = bench.build("llama_tiny", "identity", "eager", torch.float32, torch.device("cpu"), clock)
    timed = [m for m in model.modules() if isinstance(m, bench.TimedNorm)]
    assert len(timed) == 2 * 2 + 1 and all(isinstance(m.inner, nn.Identity) for m in timed)


OTHER = 1.0  # outside the norms, per pass: dwarfs the sleeps' overshoot on a loaded machine


class SlowLayer(nn.Module):
    """Not a norm: spends OTHER seconds per forward pass around ``inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        time.sleep(OTHER)
        return self.inner(x)


def test_measure_separates_norm_time_from_model_time():
    """A LLaMA whose norms take 2 x PAUSE each per pass and whose other layers take OTHER more: the
    layer time is the norms' time (not the model's), the model time includes both."""
    clock = bench.NormClock(torch.device("cpu"))
    model = bench.build("llama_tiny", "rmsnorm", "eager", torch.float32, torch.device("cpu"), clock)
    timed = [m for m in model.modules() if isinstance(m, bench.TimedNorm)]
    for m in timed:
        m.inner = SlowNorm()
    model.output = SlowLayer(model.output)
    tokens = torch.randint(0, model.vocab_size, (1, 9))
    model_s, layer_s = bench.measure(model, tokens, clock, iters=1, warmup=1, train=True)
    norms_s = len(timed) * 2 * PAUSE
    assert norms_s <= layer_s < norms_s + OTHER / 2  # slack for sleeps overshooting on a busy machine
    assert model_s >= norms_s + OTHER


@pytest.mark.parametrize("norm", ["rmsnorm", "dyt"])
def test_benchmark_command_reports_model_and_layer_time(norm):
    rows = bench.main(
        [
            "--model",
            "llama_tiny",
            "--seq-len",
            "32",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--modes",
            "eager",
            "--norms",
            norm,
        ]
    )
    row = rows[0]
    assert row["norm"] == norm and row["device"] == "cpu"
    # The command line end to end; what "layer" and "model" mean is pinned by the test above (timings of
    # two separate runs are not compared here: on a loaded machine either can be the slower).
    for kind in ("inference", "training"):
        assert row[f"{kind}_layer_s"] > 0 and row[f"{kind}_model_s"] > 0
