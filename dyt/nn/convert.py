"""``convert``: retrofit DyT (or any registered norm) into an existing model, in place.

    report = dyt.convert(model, to="dyt")                      # every LayerNorm / RMSNorm -> DyT
    report = dyt.convert(model, to="derf")
    report = dyt.convert(llama, to="dyt", sites={              # LLaMA-7B alpha, attention / other (Table 10)
        "model.layers.input_layernorm": {"alpha_init": 0.8},
        "model.layers.post_attention_layernorm": {"alpha_init": 0.2},
        "model.norm": {"alpha_init": 0.2}})
    print(report)

What is replaced: ``nn.LayerNorm`` and its subclasses (timm's ``LayerNorm``, channels-first
``LayerNorm2d``, ...), ``nn.RMSNorm``, this library's ``LayerNorm``/``RMSNorm``, and any other module
whose class name contains ``LayerNorm`` or ``RMSNorm`` (timm's ``RmsNorm``/``RmsNorm2d``, Hugging
Face's ``LlamaRMSNorm``, T5's RMS ``T5LayerNorm``, ...). A name-matched module that contains norms of
its own is a wrapper, not a norm: convert replaces the norms inside it, as the official converter
(DyT ``dynamic_tanh.py``) does; e.g. the ``LayerNorm`` inside diffusers' ``AdaLayerNormZero``, whose
scale and shift come from the conditioning. A name is only a candidate: before a module is
replaced, a numeric probe checks that it computes LayerNorm or RMSNorm over its channels, scaled by its
own ``weight`` (plus ``bias``), in the layout we inferred (channels-first when the class says so:
``layout`` attribute, or a name ending in ``2d``/``3d`` as timm's). A candidate that fails (Gemma's ``(1 + weight)``
RMSNorm, a norm fused with an activation, a norm over several dimensions) raises an error naming it,
rather than being skipped or replaced by something that computes a different function.

Each replacement keeps its site's width, layout, device and dtype, has an affine ``weight`` only if the
old module had one, and a ``bias`` only if it had one (RMSNorm -> DyT without bias, as the paper's
LLaMA). **The old ``weight`` and ``bias`` are copied into the new module**, so a converted pretrained
model starts from its trained per-channel scales and only ``alpha`` (and Derf's ``shift``) start fresh;
the official code instead re-initializes them to 1 and 0. Call ``reset_parameters()`` on the new
modules for that behaviour.

Each module's *site* is its qualified name without layer indices (``blocks.norm1``, ``stem``,
``model.layers.input_layernorm``), so ``sites=`` sets options for every layer at one position, as
``norm.sites`` does for the models of this library.

Only norms change: the paper's LLaMA also adds a learnable sqrt(d) scalar after the embedding (App. A),
which ``convert`` does not (models/llama.py builds it).

BatchNorm is left alone (and counted in the report): the paper (App. D, Table 16) found DyT does not
replace it (ResNet-50 top-1 76.2% -> 68.9%, VGG19 72.7% -> 71.0%). ``batchnorm=True`` replaces plain
BatchNorm layers too, with a warning quoting that result; ``sites=`` naming a BatchNorm site without
it is refused.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dyt.nn.factory import NormFactory, build_norm_factory
from dyt.nn.inspect import is_batchnorm, is_norm_candidate, norm_eps, norm_layout, tensor_attr
from dyt.nn.norms import BatchNorm

_PLAIN_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, BatchNorm)
_PAPER_ON_BATCHNORM = (
    "the paper (App. D, Table 16) replaced BatchNorm with DyT in ResNet-50 (top-1 76.2% -> 68.9%) and VGG19 "
    "(72.7% -> 71.0%), and attributes the gap to BatchNorm following every weight layer"
)


@dataclass
class ConversionReport:
    """What ``convert`` replaced: counts per replaced class and per site."""

    to: str
    by_type: Counter = field(default_factory=Counter)
    by_site: Counter = field(default_factory=Counter)
    untouched: Counter = field(default_factory=Counter)  # BatchNorm classes left as they were

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    def __str__(self) -> str:
        lines = [f"converted {self.total} norm module(s) to {self.to}:"]
        lines += [f"  {name:<28} {n:>5}" for name, n in sorted(self.by_type.items())]
        lines.append("sites: " + ", ".join(f"{site} ({n})" for site, n in sorted(self.by_site.items())))
        if self.untouched:
            kept = ", ".join(f"{n} {name}" for name, n in sorted(self.untouched.items()))
            lines.append(f"left unchanged: {kept} (BatchNorm; see convert(..., batchnorm=True))")
        return "\n".join(lines)


def _width(module: nn.Module, weight: torch.Tensor | None, where: str) -> int:
    if weight is not None:
        if weight.dim() != 1:
            raise ValueError(
                f"cannot convert {where} ({type(module).__name__}): its weight has shape "
                f"{tuple(weight.shape)}, but DyT's per-channel weight normalizes one dimension"
            )
        return weight.shape[0]
    shape = getattr(module, "normalized_shape", None) or getattr(module, "dim", None)
    shape = (shape,) if isinstance(shape, int) else tuple(shape or ())
    if len(shape) != 1:
        raise ValueError(
            f"cannot convert {where} ({type(module).__name__}): it normalizes over shape {shape}, "
            "but DyT replaces a norm over one (channel) dimension"
        )
    return shape[0]


def _probe(module: nn.Module, width: int, layout: str, weight, bias, eps: float | None, where: str) -> None:
    """Raise unless ``module`` computes LayerNorm or RMSNorm over channels with its own weight and bias."""
    gen = torch.Generator().manual_seed(0)  # a private generator: the caller's RNG stream is untouched
    shape = (2, 3, width) if layout == "channels_last" else (2, width, 3, 5)
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(weight.device if weight is not None else "cpu")
    probe = copy.deepcopy(module).float().to(x.device)
    try:
        with torch.no_grad():
            y = probe(x)
    except Exception as err:  # any failure means "not the norm we took it for"
        raise ValueError(
            f"cannot convert {where} ({type(module).__name__}): it failed on a {layout} probe "
            f"input of shape {tuple(shape)} ({err})"
        ) from err
    xs = x.movedim(1, -1) if layout == "channels_first" else x
    eps = eps or 0.0
    centered = xs - xs.mean(-1, keepdim=True)
    references = {
        "LayerNorm": centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps),
        "RMSNorm": xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps),
    }
    for ref in references.values():
        if weight is not None:
            ref = ref * weight.float()
        if bias is not None:
            ref = ref + bias.float()
        ref = ref.movedim(-1, 1) if layout == "channels_first" else ref
        if y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-3, atol=1e-3):
            return
    raise ValueError(
        f"cannot convert {where} ({type(module).__name__}): a probe shows it does not compute "
        f"{' or '.join(references)} over channels ({layout}) scaled by its own weight"
        f"{' and bias' if bias is not None else ''}, so a replacement would change the model. "
        "Supported: LayerNorm- and RMSNorm-family modules whose output is norm(x) * weight (+ bias)."
    )


def _factory_device(parent: nn.Module, weight: torch.Tensor | None):
    """Device and dtype of the new module: the old weight's, else the parent's first parameter's."""
    ref = weight if weight is not None else next(parent.parameters(), None)
    return (ref.device, ref.dtype) if ref is not None else (None, None)


def _replacement(module: nn.Module, parent: nn.Module, site: str, factory: NormFactory, where: str) -> nn.Module:
    weight, bias = tensor_attr(module, "weight"), tensor_attr(module, "bias")
    if is_batchnorm(module):  # opted in (batchnorm=True): normalizes dimension 1 of (N, C, ...)
        if type(module) not in _PLAIN_BATCHNORM:
            raise ValueError(
                f"cannot convert {where} ({type(module).__name__}): it is a BatchNorm subclass that may do more "
                "than normalize (e.g. timm's BatchNormAct2d adds an activation); only plain BatchNorm1d/2d/3d, "
                "SyncBatchNorm and dyt.nn.BatchNorm are replaced with batchnorm=True"
            )
        width, layout, eps = module.num_features, "channels_first", module.eps
    else:
        width, layout, eps = _width(module, weight, where), norm_layout(module), norm_eps(module)
        if weight is None or weight.device.type != "meta":
            _probe(module, width, layout, weight, bias, eps, where)
    device, dtype = _factory_device(parent, weight)
    hints = {"affine": weight is not None, "bias": bias is not None}
    if eps is not None:
        hints["eps"] = eps
    new = factory(width, site=site, layout=layout, device=device, dtype=dtype, **hints)
    with torch.no_grad():
        for name, old in (("weight", weight), ("bias", bias)):
            target = tensor_attr(new, name)
            if old is not None and target is not None:
                target.copy_(old)
                target.requires_grad_(old.requires_grad)
    return new


def _site(qualified_name: str) -> str:
    return ".".join(part for part in qualified_name.split(".") if not part.isdigit()) or qualified_name


def _refuse_batchnorm_sites(model: nn.Module, sites: Mapping[str, Any]) -> None:
    """``sites=`` naming a BatchNorm site is an explicit request to replace BatchNorm: refuse it unless
    opted in."""
    named = sorted({_site(name) for name, m in model.named_modules() if is_batchnorm(m)} & set(sites))
    if named:
        raise ValueError(
            f"sites={named} name BatchNorm layers, which convert leaves alone: {_PAPER_ON_BATCHNORM}. "
            "To replace them anyway, pass batchnorm=True"
        )


def convert(
    model: nn.Module, to: str | Mapping[str, Any] = "dyt", *, batchnorm: bool = False, **options: Any
) -> ConversionReport:
    """Replace every LayerNorm- and RMSNorm-family module of ``model`` in place by the norm ``to``.

    Args:
        model: any ``nn.Module`` (timm, Hugging Face transformers, torchvision, this library).
        to: a registered norm name (``dyt``, ``derf``, ``layernorm``, ``rmsnorm``) or a ``configs/norm``
            mapping.
        **options: options of that norm (``alpha_init=0.5``, ``squash="hardtanh"``...) and ``sites=``
            (per-site options, keyed by index-free qualified names); an option the norm does not accept
            raises the factory's error listing the valid ones.
        batchnorm: also replace plain BatchNorm layers (channels-first, weight and bias copied), with a
            warning: the paper found this hurts (App. D, Table 16). By default BatchNorm is left alone.

    Returns:
        A ``ConversionReport`` (printable): replaced modules per class and per site, and ``total``.

    Raises:
        ValueError: a name-matched norm does not compute LayerNorm/RMSNorm as expected; there is nothing
            to replace; an option or site is unknown; ``sites`` names a BatchNorm site without
            ``batchnorm=True``. The model is then left unchanged.
    """
    config = {"name": to, **options} if isinstance(to, str) else {**to, **options}
    factory = build_norm_factory(config)
    if not batchnorm:
        _refuse_batchnorm_sites(model, config.get("sites") or {})
    report = ConversionReport(to=factory.name)
    built: dict[int, nn.Module] = {}  # a norm shared by several parents stays shared
    plan: list[tuple[nn.Module, str, nn.Module]] = []  # applied only once every replacement is built

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            qualified = f"{prefix}{name}"
            if id(child) in built:
                plan.append((parent, name, built[id(child)]))
            elif is_batchnorm(child) and not batchnorm:
                report.untouched[type(child).__name__] += 1
            elif is_norm_candidate(child) or is_batchnorm(child):
                site = _site(qualified)
                built[id(child)] = _replacement(child, parent, site, factory, qualified)
                plan.append((parent, name, built[id(child)]))
                report.by_type[type(child).__name__] += 1
                report.by_site[site] += 1
            else:
                visit(child, f"{qualified}.")

    visit(model, "")
    if not report.total:
        others = sorted(
            {
                type(m).__name__
                for m in model.modules()
                if "norm" in type(m).__name__.lower() or getattr(m, "pointwise", False)
            }
        )
        raise ValueError(
            f"convert found no LayerNorm- or RMSNorm-family module in {type(model).__name__} "
            "to replace"
            + (f"; its other norm modules are: {', '.join(others)}" if others else "")
            + ("; BatchNorm is replaced only with batchnorm=True" if report.untouched else "")
        )
    factory.check_sites_used()
    replaced_bn = sum(report.by_type[cls.__name__] for cls in _PLAIN_BATCHNORM)
    if replaced_bn:
        warnings.warn(
            f"replaced {replaced_bn} BatchNorm layer(s) with {factory.name}: {_PAPER_ON_BATCHNORM}", stacklevel=2
        )
    for parent, name, new in plan:
        setattr(parent, name, new)
    return report
