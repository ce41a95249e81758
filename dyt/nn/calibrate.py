"""``norm.alpha_init=calibrate``: each point-wise norm's alpha from the std of its input at init.

DyT does not rescale its input (LayerNorm does), so the paper's constant ``alpha_init = 0.5`` gives a
layer that reads a unit-scale input a signal of order 1, and a layer that reads a std-0.02 embedding a
signal of 0.01 (HyenaDNA, Caduceus at every width; LLaMA below the 7B width). Calibration sets, layer
by layer, ``alpha = target / std(x)`` where ``x`` is that layer's input on one training batch, so that
``alpha * std(x)`` equals ``target`` everywhere, as it is (about 0.3) at every DyT of the paper's ViT-B
with alpha 0.5.

The layers are calibrated in one forward pass, in the order the forward pass reaches them: a forward
pre-hook measures a layer's input and sets its alpha before the layer runs, so every later layer sees
the outputs of calibrated earlier ones. The statistics are summed over all ranks of the default process
group before the division, so every rank sets the same alpha. A layer called several times in the pass
is calibrated on its first call. Only layers built with ``alpha_init="calibrate"`` (they carry a
``calibrate_to`` target, set by the norm factory) are touched; all others keep their alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dyt.nn.probes import pointwise_norms


def calibration_targets(model: nn.Module) -> dict[str, float]:
    """``{layer name: target alpha * std}`` of the layers built with ``alpha_init="calibrate"``."""
    return {name: float(m.calibrate_to) for name, m in pointwise_norms(model) if getattr(m, "calibrate_to", None)}


def _global_std(x: torch.Tensor) -> float:
    """The std over every element of ``x`` on every rank (sums in float64, reduced over the process group)."""
    x = x.detach().to(torch.float64)
    sums = torch.stack([x.sum(), x.pow(2).sum(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    total, squares, n = sums.tolist()
    if n < 2:
        return 0.0
    mean = total / n
    return max(squares / n - mean * mean, 0.0) ** 0.5 * (n / (n - 1)) ** 0.5


@torch.no_grad()
def calibrate_alpha(model: nn.Module, forward: Callable[[], Any]) -> dict[str, dict[str, float]]:
    """Run ``forward()`` once and set the alpha of every layer built with ``alpha_init="calibrate"`` to
    ``calibrate_to / std(input)``, in forward order (module doc). Every rank must call it together.

    Returns ``{layer: {"input_std": std, "alpha": alpha, "target": calibrate_to}}`` for the calibrated
    layers, in the order they were reached. Raises when a layer's input is constant (std 0 or not
    finite), naming it; layers the pass does not reach keep their alpha and are absent from the result.
    """
    targets = calibration_targets(model)
    done: dict[str, dict[str, float]] = {}
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if name in done:
                return
            std = _global_std(args[0])
            if not std > 0 or std == float("inf"):
                raise ValueError(
                    f"norm.alpha_init=calibrate: the input of {name} has std {std} on the calibration batch, so no "
                    "alpha can scale it to norm.calibrate_to; give this site a number "
                    f"(norm.sites.<site>.alpha_init) or check the model's initialisation"
                )
            alpha = targets[name] / std
            module.set_alpha(alpha)
            done[name] = {"input_std": std, "alpha": alpha, "target": targets[name]}

        return hook

    for name, module in pointwise_norms(model):
        if name in targets:
            handles.append(module.register_forward_pre_hook(hook_for(name)))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return done
