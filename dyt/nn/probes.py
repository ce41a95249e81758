"""Per-layer probes of the point-wise norms (DyT, Derf) in a model.

Each point-wise norm learns one scalar ``alpha``; the paper tracks it per layer during training and
finds it follows ``1/std`` of the layer's input activations (paper Sec. 6.2, Fig. 8). The probes find
the layers by class (``PointwiseNorm``), not by attribute name, so no other parameter that happens to
be called ``alpha`` is mistaken for one.

They work on plain, DDP-unwrapped, compiled and FSDP2-sharded models: a sharded ``alpha`` (a DTensor)
is gathered with ``full_tensor()``, a collective, so under FSDP2 every rank must call them together.
"""

from __future__ import annotations

import torch
from torch import nn

from dyt.nn.pointwise import PointwiseNorm


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
