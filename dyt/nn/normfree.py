"""The other normalization-free methods the paper compares DyT with (Table 9): no norm at all, plus

* **SkipInit** (De & Smith 2020; ReZero, Bachlechner et al. 2021): every residual branch is multiplied by
  a learnable scalar initialised to 0, so each block is the identity at initialisation.
* **Fixup** (Zhang et al. 2019; its Transformer form, T-Fixup, Huang et al. 2020): the last layer of
  every residual branch and the classifier start at 0, the other layers of a branch are scaled down by
  ``L ** (-1 / (2m - 2))`` (``L`` residual branches of ``m`` layers each), and every branch gets a
  learnable scalar multiplier initialised to 1.
* **sigma-Reparam** (Zhai et al. 2023): every linear layer uses ``W_hat = gamma / sigma(W) * W``, with
  ``sigma(W)`` the spectral norm of ``W`` estimated by one power-iteration step per training forward
  and ``gamma`` a learnable scalar initialised to 1 (so each layer starts with spectral norm 1).

Removing the norms is ``norm=identity`` (:class:`NoNorm`); the paper's Table 9 runs Fixup and SkipInit
without norms and needed a learning-rate search for every method (paper Sec. 6.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyt.nn.norms import check_layout
from dyt.nn.registry import register_norm

RESIDUAL_INITS = ("fixup", "skipinit")


@register_norm("identity")
class NoNorm(nn.Identity):
    """No normalization: the layer a norm-free model (Fixup, SkipInit, sigma-Reparam) builds at every norm
    site. It takes no options, so every model hint (eps, alpha_init, ...) is dropped by the factory."""

    # Not ``pointwise``: the recipe changes keyed on it (LLaMA's sqrt(d) embedding scale, DiT without
    # adaLN-Zero) compensate for DyT's squashing, which a model without norms does not have.

    def __init__(self, dim: int, layout: str = "channels_last", device=None, dtype=None) -> None:
        super().__init__()
        self.dim, self.layout = dim, check_layout(layout)

    def extra_repr(self) -> str:
        return f"{self.dim}, layout={self.layout}"


class BranchScale(nn.Module):
    """A learnable scalar multiplying one residual branch: SkipInit starts it at 0, Fixup at 1."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.init = init
        self.scale = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.scale, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"init={self.init}"


def check_normfree_options(residual_init: str | None, sigma_reparam: bool, init_values: float | None = None) -> None:
    """Refuse the options a model cannot combine (the models call it before building anything): an
    unknown ``residual_init``, a branch scalar on top of layer scale (``init_values``), Fixup together
    with sigma-Reparam."""
    if residual_init is not None and residual_init not in RESIDUAL_INITS:
        raise ValueError(
            f"unknown residual_init {residual_init!r}; valid choices are: {', '.join(RESIDUAL_INITS)} "
            "(or null for the standard init)"
        )
    if residual_init is not None and init_values:
        raise ValueError(
            f"residual_init={residual_init!r} replaces layer scale with a scalar per residual branch; "
            f"set init_values=None (got {init_values}) or residual_init=None"
        )
    if residual_init == "fixup" and sigma_reparam:
        raise ValueError(
            "residual_init='fixup' zeroes the last layer of each branch, whose spectral norm sigma-Reparam "
            "divides by; use one of them (paper Table 9 compares them separately)"
        )


def branch_scale(residual_init: str | None) -> nn.Module | None:
    """The branch multiplier for ``residual_init`` (``None``: no multiplier); an unknown name raises."""
    if residual_init is None:
        return None
    check_normfree_options(residual_init, sigma_reparam=False)
    return BranchScale(0.0 if residual_init == "skipinit" else 1.0)


@torch.no_grad()
def fixup_init_(branches: list[list[nn.Linear]], head: nn.Linear | None = None) -> None:
    """Fixup's rules on already-initialised layers: each branch is its weight layers in order; the last is
    zeroed, the others are multiplied by ``L ** (-1 / (2m - 2))`` (``L`` = number of branches, ``m`` =
    layers per branch); ``head`` (the classifier), if given, is zeroed."""
    num = len(branches)
    for layers in branches:
        if len(layers) < 2:
            raise ValueError(f"Fixup needs at least 2 weight layers per residual branch; got {len(layers)}")
        factor = num ** (-1.0 / (2 * len(layers) - 2))
        for layer in layers[:-1]:
            layer.weight.mul_(factor)
        nn.init.zeros_(layers[-1].weight)
        if layers[-1].bias is not None:
            nn.init.zeros_(layers[-1].bias)
    if head is not None:
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


class SigmaReparamLinear(nn.Linear):
    """``nn.Linear`` with sigma-Reparam (Zhai et al. 2023, Eq. 3): the weight used is ``gamma / sigma * W``.

    ``sigma = u^T W v`` with unit vectors ``u``, ``v`` (buffers) refined by one power-iteration step per
    forward in training mode; gradients flow through ``W`` in ``sigma`` but not through ``u``, ``v``.
    ``reset_parameters()`` also runs ``init_iters`` steps so ``sigma`` is accurate from the first step.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_iters: int = 15, **kw) -> None:
        self.init_iters = init_iters
        super().__init__(in_features, out_features, bias=bias, **kw)

    def reset_parameters(self) -> None:
        if not hasattr(self, "gamma"):  # nn.Linear.__init__ calls this before the extra state exists
            factory = {"device": self.weight.device, "dtype": self.weight.dtype}
            self.gamma = nn.Parameter(torch.empty((), **factory))
            self.register_buffer("u", torch.empty(self.out_features, **factory))
            self.register_buffer("v", torch.empty(self.in_features, **factory))
        super().reset_parameters()
        self.reset_reparam()

    @torch.no_grad()
    def reset_reparam(self) -> None:
        """gamma = 1 and fresh power-iteration vectors for the current ``W`` (call after re-initialising
        the weight in place, as the models' ``reset_parameters()`` do)."""
        nn.init.ones_(self.gamma)
        if self.weight.is_meta:
            return
        nn.init.normal_(self.v)
        self.v.copy_(F.normalize(self.v, dim=0))
        self.power_iteration(self.init_iters)

    @torch.no_grad()
    def power_iteration(self, steps: int = 1) -> None:
        """``steps`` steps of power iteration on ``W`` (updates ``u``, ``v`` in place)."""
        w = self.weight.detach()
        for _ in range(steps):
            self.u.copy_(F.normalize(w @ self.v, dim=0))
            self.v.copy_(F.normalize(w.t() @ self.u, dim=0))

    def sigma(self) -> torch.Tensor:
        """The current spectral-norm estimate ``u^T W v`` (differentiable in ``W``)."""
        return torch.dot(self.u, self.weight @ self.v)

    def effective_weight(self) -> torch.Tensor:
        return self.gamma / self.sigma() * self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.power_iteration(1)
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", sigma_reparam=True"


def reset_sigma_reparam_(module: nn.Module) -> None:
    """:meth:`SigmaReparamLinear.reset_reparam` on every sigma-Reparam layer inside ``module``: the last
    step of a model's ``reset_parameters()``, once its weights have their final init."""
    for layer in module.modules():
        if isinstance(layer, SigmaReparamLinear):
            layer.reset_reparam()


def sigma_reparam_(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by a :class:`SigmaReparamLinear` of the same shape (on
    the same device; weights are not copied: call the model's ``reset_parameters()`` afterwards)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            factory = {"device": child.weight.device, "dtype": child.weight.dtype}
            new = SigmaReparamLinear(child.in_features, child.out_features, bias=child.bias is not None, **factory)
            setattr(module, name, new)
        else:
            sigma_reparam_(child)
    return module
