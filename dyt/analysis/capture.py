"""What each norm layer does to its input: the paper's input-output maps (Sec. 3, Figs. 2 and 4).

The paper runs one mini-batch through a trained network and records, for every LayerNorm, the tensor
right before and right after normalization, *before the learnable affine*. Each element is one
(x = input, y = output) point; deep layers trace tanh-like S-curves, which is what motivated DyT.

:func:`capture_norms` does this for any model: those built here (LayerNorm, RMSNorm, DyT, Derf from the
norm factory), timm and Hugging Face models, with or without ``dyt.convert``. It records each norm's
input with a forward hook and computes the pre-affine output from it: ``(x - mean) / std`` for a
LayerNorm, ``x / rms`` for an RMSNorm, ``(x - running_mean) / running_std`` for a BatchNorm in eval
mode, ``squash(alpha * x)`` for DyT (``erf(alpha * x + shift)`` for Derf). Which formula a foreign
module computes is not guessed from its name: the formula is accepted only if, with the module's own
``weight`` and ``bias`` applied, it reproduces the output the hook saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyt.nn.inspect import is_batchnorm, is_norm_candidate, norm_eps, norm_layout, tensor_attr
from dyt.nn.pointwise import SQUASH, Derf, DyT, PointwiseNorm


@dataclass
class NormCapture:
    """One norm layer on one batch. ``x`` and ``y`` are (tokens, channels), fp32 on CPU: row ``i`` is
    one token (a sequence position of one sample, or one pixel of a channels-first map), column ``j``
    one channel, so Fig. 4's colouring by token or by channel is a row or column index."""

    name: str
    kind: str  # layernorm | rmsnorm | batchnorm | dyt | derf
    x: torch.Tensor  # the layer's input
    y: torch.Tensor  # its output before the affine
    alpha: float | None = None  # point-wise norms: the scalar the squashing function is applied at


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every normalization layer of ``model`` (point-wise norms, LayerNorm/RMSNorm families as
    ``dyt.convert`` finds them, BatchNorm), with qualified names, in ``named_modules`` order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, PointwiseNorm) or is_norm_candidate(m) or is_batchnorm(m)
    ]


def _channels_last(t: torch.Tensor, layout: str) -> torch.Tensor:
    t = t.detach().float()
    return t.movedim(1, -1) if layout == "channels_first" else t


def _affine(y: torch.Tensor, module: nn.Module) -> torch.Tensor:
    weight, bias = tensor_attr(module, "weight"), tensor_attr(module, "bias")
    if weight is not None and weight.dim() == 1:
        y = y * weight.detach().float()
    if bias is not None and bias.dim() == 1:
        y = y + bias.detach().float()
    return y


def _statistics_norm(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Candidate pre-affine outputs of a LayerNorm/RMSNorm/BatchNorm-family module on channels-last
    ``x``; the caller keeps the one that reproduces the module's output."""
    if is_batchnorm(module):
        mean, var = module.running_mean, module.running_var
        if mean is None or module.training:
            mean, var = x.flatten(0, -2).mean(0), x.flatten(0, -2).var(0, unbiased=False)
        return {"batchnorm": (x - mean.float()) * torch.rsqrt(var.float() + module.eps)}
    eps = norm_eps(module) or 0.0
    centered = x - x.mean(-1, keepdim=True)
    return {
        "layernorm": centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps),
        "rmsnorm": x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps),
    }


def pre_affine(module: nn.Module, x: torch.Tensor, out: torch.Tensor, name: str = "") -> tuple[str, torch.Tensor]:
    """(kind, output before the affine) of norm ``module`` for input ``x`` (both channels-last), checked
    against ``out``, the module's actual output. Raises when no known formula reproduces ``out``."""
    if isinstance(module, DyT):
        candidates = {"dyt": SQUASH[module.squash](module.alpha.detach().float() * x)}
    elif isinstance(module, Derf):
        candidates = {"derf": torch.erf(module.alpha.detach().float() * x + module.shift.detach().float())}
    else:
        candidates = _statistics_norm(module, x)
    for kind, y in candidates.items():
        if torch.allclose(_affine(y, module), out, rtol=1e-3, atol=1e-3 * (1 + out.abs().max().item())):
            return kind, y
    raise ValueError(
        f"cannot capture norm layer {name!r} ({type(module).__name__}): none of {sorted(candidates)} followed by "
        "its own weight and bias reproduces its output. Captured layers must compute "
        "affine(normalize(x)) per channel; pass layers= to leave this one out"
    )


@torch.no_grad()
def forward_eval(model: nn.Module, run: Callable[[nn.Module], Any] | Any) -> Any:
    """``run(model)`` (a function) or ``model(run)`` (a batch) in eval mode, without gradients; the
    model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return run(model) if callable(run) and not isinstance(run, torch.Tensor) else model(run)
    finally:
        model.train(was_training)


@torch.no_grad()
def capture_norms(
    model: nn.Module,
    run: Callable[[nn.Module], Any] | Any,
    layers: list[str] | None = None,
    max_tokens: int | None = None,
) -> dict[str, NormCapture]:
    """Run one forward pass in eval mode and capture every norm layer's input and pre-affine output.

    Args:
        model: any model; its train/eval mode is restored afterwards.
        run: the batch to call ``model`` with, or a function ``run(model)`` doing the forward pass
            (for models that take several inputs, e.g. DiT's ``model(x, t, y)``).
        layers: qualified names of the norm layers to capture (default: all, see :func:`norm_layers`).
        max_tokens: keep only the first ``max_tokens`` rows of each capture (memory on large models).
    Returns: ``{layer name: NormCapture}`` in model order.
    """
    found = dict(norm_layers(model))
    names = list(found) if layers is None else layers
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"not norm layers of this model: {unknown}; its norm layers are: {', '.join(found) or 'none'}")
    captured: dict[str, NormCapture] = {}

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            layout = "channels_first" if is_batchnorm(module) else norm_layout(module)
            x, y_out = _channels_last(args[0], layout), _channels_last(out, layout)
            kind, y = pre_affine(module, x, y_out, name)
            x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
            if max_tokens is not None:
                x, y = x[:max_tokens], y[:max_tokens]
            alpha = float(module.alpha.detach().float().mean()) if isinstance(module, PointwiseNorm) else None
            captured[name] = NormCapture(name, kind, x.cpu(), y.cpu(), alpha)

        return fn

    handles = [found[n].register_forward_hook(hook(n)) for n in names]
    try:
        forward_eval(model, run)
    finally:
        for h in handles:
            h.remove()
    return {n: captured[n] for n in names if n in captured}


# Paper Fig. 2 (ViT-B panel): "LN layer 5, 15, 20, 25" of ViT-B's 25 LayerNorms (two per block for 12
# blocks, then the final one), counted from 1 in model order.
PAPER_VIT_LAYERS = (5, 15, 20, 25)
PAPER_VIT_NORMS = 25


def default_layers(names: list[str]) -> list[str]:
    """The paper's Fig. 2 layer choice for a model with ViT-B's 25 norms; for any other model the norms
    at the same relative depths (5/25, 15/25, 20/25 and the last)."""
    n = len(names)
    if n == 0:
        return []
    picks = [max(1, round(k * n / PAPER_VIT_NORMS)) for k in PAPER_VIT_LAYERS]
    return [names[i - 1] for i in dict.fromkeys(picks)]


def save_captures(captures: dict[str, NormCapture], path: str | Path) -> Path:
    """Write captures (plain tensors and numbers) to ``path`` so figures re-plot without the model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: vars(c) for name, c in captures.items()}, path)
    return path


def load_captures(path: str | Path) -> dict[str, NormCapture]:
    """What :func:`save_captures` wrote."""
    return {name: NormCapture(**fields) for name, fields in torch.load(path, weights_only=True).items()}
