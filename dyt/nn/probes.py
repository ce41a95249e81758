"""Per-layer probes of the point-wise norms (DyT, Derf) in a model: alpha, and the scale of the input.

Each point-wise norm learns one scalar ``alpha``; the paper tracks it per layer during training and
finds it follows ``1/std`` of the layer's input activations (paper Sec. 6.2, Fig. 8). Unlike LayerNorm,
a point-wise norm does not rescale its input: what the next layer sees is ``tanh(alpha * x)``, so the
product ``alpha * std(x)`` decides whether the layer passes a signal of order 1 (the paper's ViT-B at
init: about 0.3 at every site), almost nothing (a std-0.02 embedding read with alpha 0.5: 0.01) or
only the sign (most ``|alpha * x|`` beyond 2, where tanh is flat). :class:`ScaleProbe` records, per
layer, ``input_std/<layer>``, ``scale/<layer>`` (``|alpha| * std``) and ``saturated/<layer>`` (the
fraction of inputs with ``|alpha * x| > 2``), with a few reductions per layer and no host sync until
:meth:`ScaleProbe.collect`.

The probes find the layers by class (``PointwiseNorm``), not by attribute name, so no other parameter
that happens to be called ``alpha`` is mistaken for one. They work on plain, DDP-unwrapped, compiled
and FSDP2-sharded models: a sharded ``alpha`` (a DTensor) is gathered with ``full_tensor()``, a
collective, so under FSDP2 every rank must call :func:`alpha_stats` together.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dyt.nn.pointwise import PointwiseNorm

SATURATION = 2.0  # |alpha * x| beyond which tanh(alpha * x) is within 4% of +-1: the input's size is lost
# Band of alpha * std at init outside which the start-up check warns. Below LOW a layer passes a signal
# over 50x weaker than LayerNorm's unit-std output: HyenaDNA and Caduceus read their std-0.02 embedding at
# 0.01 and fail (chance accuracy in our CPU runs), while the lowest layer of the paper's ViT-B (fc_norm,
# 0.037 with alpha 0.5) works. Above HIGH most inputs land where tanh is flat.
LOW, HIGH = 0.02, 2.0


def pointwise_norms(model: nn.Module) -> list[tuple[str, PointwiseNorm]]:
    """Every point-wise norm layer of ``model`` with its qualified name, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PointwiseNorm)]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def alpha_stats(model: nn.Module, per_layer: bool = True) -> dict[str, float]:
    """``{"alpha/mean": mean |alpha| over the point-wise norms, "alpha/<layer name>": |alpha|, ...}``
    (per-layer entries only with ``per_layer``); ``{}`` when the model has no point-wise norm."""
    layers = pointwise_norms(model)
    if not layers:
        return {}
    values = torch.stack([_full(m.alpha).detach().abs().float().mean() for _, m in layers]).cpu()
    stats = {"alpha/mean": values.mean().item()}
    if per_layer:
        stats.update({f"alpha/{name}": v for (name, _), v in zip(layers, values.tolist(), strict=True)})
    return stats


class ScaleProbe:
    """Records the input scale of every point-wise norm on the forward passes inside :meth:`recording`.

    Per layer and recorded forward pass: the std of the input over all its elements, ``|alpha| * std``
    and the fraction of elements with ``|alpha * x| > 2``; :meth:`collect` returns their means over the
    recorded passes (every micro-batch of a step counts) and forgets them. Each rank measures its own
    micro-batches (no collective)::

        probe = ScaleProbe(model)
        with probe.recording():          # forward hooks only inside
            loss = task.training_step(model, batch, info)
        row = probe.collect()            # {"input_std/<layer>": ..., "scale/<layer>": ..., ...} or {}
    """

    KEYS = ("input_std", "scale", "saturated")

    def __init__(self, model: nn.Module, keys: tuple[str, ...] = KEYS) -> None:
        unknown = sorted(set(keys) - set(self.KEYS))
        if unknown:
            raise ValueError(f"unknown probe keys {unknown}; valid keys are: {', '.join(self.KEYS)}")
        self.model, self.keys = model, keys
        self.layers = pointwise_norms(model)  # found once: walking the modules costs ~0.1 ms a time
        self._sums: dict[str, torch.Tensor] = {}  # layer -> (std, scale, saturated) summed over passes
        self._counts: dict[str, int] = {}

    @contextlib.contextmanager
    def recording(self, enabled: bool = True) -> Iterator[None]:
        """Hooks on every point-wise norm for the body (when ``enabled``; otherwise nothing at all)."""
        if not enabled:
            yield
            return
        handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str):
        def fn(module: PointwiseNorm, args: tuple) -> None:
            stats = input_scale(args[0], module.alpha)
            self._sums[name] = stats if name not in self._sums else self._sums[name] + stats
            self._counts[name] = self._counts.get(name, 0) + 1

        return fn

    def collect(self) -> dict[str, float]:
        """The means over the passes recorded since the last call, per layer and key (``{}`` if none)."""
        row: dict[str, float] = {}
        for name, total in self._sums.items():
            values = dict(zip(self.KEYS, (total / self._counts[name]).tolist(), strict=True))
            row.update({f"{key}/{name}": values[key] for key in self.keys})
        self._sums, self._counts = {}, {}
        return row


@torch.no_grad()
def input_scale(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(std(x), |alpha| * std(x), fraction of |alpha * x| > 2)`` of one input, as a float tensor."""
    x = x.detach().float()
    a = _full(alpha).detach().float().abs().reshape(())
    std = x.std() if x.numel() > 1 else x.new_zeros(())
    saturated = ((a * x).abs() > SATURATION).float().mean()
    return torch.stack([std, a * std, saturated])


def scale_summary(row: dict[str, float], sensitive: bool = True) -> dict[str, Any]:
    """From one :meth:`ScaleProbe.collect` row: the layers outside the order-1 band of ``alpha * std``
    (``low``: below :data:`LOW`, only for a ``sensitive`` model; ``high``: above :data:`HIGH`) and the
    range over layers."""
    scales = {k.removeprefix("scale/"): v for k, v in row.items() if k.startswith("scale/")}
    saturated = {k.removeprefix("saturated/"): v for k, v in row.items() if k.startswith("saturated/")}
    if not scales:
        return {}
    lowest = min(scales, key=scales.get)
    return {
        "layers": len(scales),
        "min": (lowest, scales[lowest]),
        "median": statistics.median(scales.values()),
        "max": max(scales.values()),
        "saturated_max": max(saturated.values(), default=0.0),
        "low": sorted(k for k, v in scales.items() if v < LOW) if sensitive else [],
        "high": sorted(k for k, v in scales.items() if v > HIGH),
    }


def scale_message(
    row: dict[str, float],
    calibrated: bool = False,
    sensitive: bool = True,
    batch: str = "one training batch",
    pretrained: bool = False,
) -> tuple[str, str | None]:
    """(the start-up line describing the scale at every point-wise norm, a warning or None) from one
    :meth:`ScaleProbe.collect` row taken on a training batch at init. ``sensitive=False`` (a model whose
    ``norm_scale_sensitive`` is False: ConvNets, where every norm output feeds a linear layer) never
    warns about a small scale. ``pretrained``: the weights came from ``init_from``, whose training set the
    scales (calibration only runs on fresh starts), and the warning says so."""
    s = scale_summary(row, sensitive)
    if not s:
        return "", None
    name, lowest = s["min"]
    line = (
        f"point-wise norm scale at init ({s['layers']} layers, {batch}): alpha x input std "
        f"min {lowest:.3g} ({name}), median {s['median']:.3g}, max {s['max']:.3g}; "
        f"inputs saturated (|alpha x| > {SATURATION:g}) at most {100 * s['saturated_max']:.1f}%"
        + (" [norm.alpha_init=calibrate]" if calibrated else "")
    )
    if not s["low"] and not s["high"]:
        return line, None
    parts = []
    if s["low"]:
        std = row[f"input_std/{name}"]
        parts.append(
            f"{len(s['low'])} layer(s) read their input at alpha x std < {LOW:g} (lowest: {name}, input std "
            f"{std:.3g}, alpha x std {lowest:.3g}), where LayerNorm would output std 1: DyT passes a signal "
            f"{1 / max(lowest, 1e-12):.0f}x weaker; where a block multiplies such inputs together (the gates "
            "of HyenaDNA and Caduceus) the signal vanishes"
        )
    if s["high"]:
        parts.append(
            f"{len(s['high'])} layer(s) read their input at alpha x std > {HIGH:g} (up to {s['max']:.3g}; "
            f"up to {100 * s['saturated_max']:.0f}% of inputs saturated): tanh keeps little more than the sign"
        )
    if pretrained:
        return line, "; ".join(parts) + (
            "; these weights come from init_from, so the scale was set by the run that made them (calibration "
            "runs on fresh starts only); docs/analysis.md, 'DyT below the paper's scale'"
        )
    fix = (
        "set norm.alpha_init=calibrate (alpha per layer so that alpha x input std = norm.calibrate_to on the "
        "first batch), a number (norm.alpha_init=...), or per-site values (norm.sites.<site>.alpha_init); "
        "docs/analysis.md, 'DyT below the paper's scale'"
    )
    return line, "; ".join(parts) + "; " + fix
