"""Architectures, one file per family, and the registry of their size presets.

Every preset is a one-line function registered with ``@register_model`` at the end of its family's
file (``vit_b``, ``convnext_t``, ``llama2_7b``, ``dit_xl2``, ...); a new family adds its module name to
``FAMILIES``. Every constructor takes ``norm``: a norm factory, a norm name or a ``configs/norm``
mapping (see ``dyt.nn.factory``); norms come only from that factory.

    model = models.create_model("vit_b", norm="dyt", num_classes=10)

The model protocol
------------------
Every model class follows it; the trainer, the tasks and ``tests/test_model_contract.py`` (run over
every registered preset x every ``configs/norm`` file) rely on nothing else.

``reset_parameters()``
    The one init method. It gives every parameter and buffer its initial value, drawing from the torch
    RNG in a fixed order, and is the only place where values are set: ``__init__`` builds its layers
    inside ``with deferred_init(self):``, which creates them on the meta device and, on leaving the
    block, materialises them on the device being built on and calls ``reset_parameters()`` once. So
    ``torch.manual_seed(s); model = build()`` and ``torch.manual_seed(s)``, a build under
    ``torch.device("meta")``, ``model.to_empty(device=...)``, ``model.reset_parameters()`` give the same
    weights, bit for bit. The trainer uses the second way under FSDP2, sharding before
    ``to_empty`` (a 70B model is never whole on one rank); there the shards draw from DTensor's RNG,
    so the values follow the same distributions but are not those of an eager build. Submodules with
    their own ``reset_parameters`` (the norms, ``nn.Conv2d``, timm's ``LayerScale``) are reset through
    it; fixed buffers (DiT's sin-cos position grid) are recomputed in it, because ``to_empty`` leaves
    them uninitialised.
``wrap_units() -> list[nn.Module]``
    The repeated blocks: FSDP2 shards each of them as one unit and activation checkpointing recomputes
    each of them in backward. Disjoint submodules, in forward order.
``example_inputs(batch: int) -> tuple``
    Positional arguments for ``model(*inputs)`` of a training forward at a small size the model
    accepts, on the model's device (random values from the torch RNG). Every trainable parameter must
    receive a gradient from the outputs (DDP requires it). The contract test builds a new family's
    inputs through it.
``resolved_options() -> dict``
    What the model resolved from ``auto`` settings and recipe quirks (JSON-serialisable), written to
    the run dir: ``norms``, every norm built, per site, with every option it was built with (the
    ``alpha_init`` actually used; ``NormFactory.resolved()``), and family quirks such as LLaMA's
    ``embed_scale`` or DiT's ``zero_init_adaln``.
``NORM_SITES: tuple[str, ...]`` (class attribute)
    Every site name the model asks the norm factory for, the one list of them: ``create_model`` fails
    when a build uses a site it does not list, and the README's table of norm sites is tested against
    it (tests/test_norm_sites.py). Which of them a build uses may depend on its options.
``norm_scale_sensitive: bool`` (optional class attribute, default True)
    False where every norm output feeds a linear layer or convolution (ConvNets): the trainer's
    start-up check then never warns about a point-wise norm reading a small input (ConvNeXt-B reads
    its inputs at ``alpha x std`` 2e-5 to 0.07 with the paper's alpha and matches LayerNorm, paper Table 1).
``no_weight_decay() -> set[str]`` (optional)
    Names of parameters the optimizer must not decay, beyond the 1-D ones (biases, norm weights,
    alpha) that ``Task.param_groups`` never decays.

Attributes tasks may read (and nothing else of a model's internals):

    ==================  =========================================================  ==================
    attribute           meaning                                                    families
    ==================  =========================================================  ==================
    ``num_classes``     classes of the classifier head or of class conditioning    vit, convnext, dit,
                                                                                   hyena, caduceus
    ``in_channels``     channels of the input image or latent                      vit, convnext, dit
    ``embed_dim``       width of the token features                                vit
    ``patch_size``      side of a square patch                                     dit
    ``grid_size``       patches per side (a sample is ``grid_size * patch_size``)  dit
    ``learn_sigma``     the output also carries the variance interpolation         dit
    ``vocab_size``      tokens of the embedding and of the output logits           llama, hyena,
                                                                                   caduceus
    ``l_max``           the longest input in tokens                                hyena
    ``causal``          output t depends on tokens <= t only                       hyena, caduceus
    ==================  =========================================================  ==================
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from dyt.engine.weights import register_published_formats
from dyt.nn import build_norm_factory

# Family modules whose presets register on import.
FAMILIES = ("vit", "convnext", "dit", "llama", "wav2vec2", "hyena", "caduceus", "torchvision_cnn", "mae", "dino")

# Published checkpoint layouts that ``init_from`` reads (dyt/engine/weights.py), in the order tried.
PUBLISHED_FORMATS = (
    "models.mae_hf",
    "models.dino_official",
    "models.wav2vec2_hf",
    "models.wav2vec2_fairseq",
    "models.hyena_released",
    "models.caduceus_hf",
)
register_published_formats(PUBLISHED_FORMATS)

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_loaded = False


EMBED_SCALES = ("none", "sqrt_d", "unit")


def embed_scale_init(kind: str, dim: int, init_std: float) -> float | None:
    """The initial value of the learnable scalar that multiplies a token embedding, by ``kind``: ``none``
    (no scalar: None), ``sqrt_d`` (sqrt(dim): the paper's LLaMA with DyT, App. A) or ``unit``
    (1 / the embedding's init std, so the embedding enters with std about 1, as LayerNorm would hand it
    to the first block: what a DyT model needs below the paper's scale; docs/analysis.md)."""
    if kind not in EMBED_SCALES:
        raise ValueError(f"unknown embed_scale {kind!r}; valid values are: {', '.join(EMBED_SCALES)}")
    return {"none": None, "sqrt_d": math.sqrt(dim), "unit": 1.0 / init_std}[kind]


@contextlib.contextmanager
def deferred_init(model: nn.Module) -> Iterator[None]:
    """Build ``model``'s layers inside this block; they get their values once, from ``reset_parameters()``.

    Layers are created on the meta device (no memory, no random draws) and, on leaving the block,
    materialised on the device the model is being built on (the default device: ``cpu``, the device
    of an enclosing ``with torch.device(...)``, or ``meta`` itself) and initialised by
    ``model.reset_parameters()``. Eager and meta-device construction therefore draw the same random
    numbers in the same order (see the model protocol above).
    """
    device = torch.get_default_device()
    with torch.device("meta"):
        yield
    model.to_empty(device=device)
    with torch.no_grad():
        model.reset_parameters()


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a size preset under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model preset {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for family in FAMILIES:
            importlib.import_module(f"models.{family}")
        _loaded = True


def model_names() -> list[str]:
    """Every registered preset name, sorted."""
    _load_families()
    return sorted(_MODELS)


def create_model(name: str | Mapping[str, Any], norm: Any = None, **overrides: Any) -> nn.Module:
    """Build preset ``name`` with the given norm; ``overrides`` replace preset arguments.

    ``name`` may also be a ``configs/model`` mapping: its ``name`` key picks the preset and the other
    keys are overrides. Unknown preset names raise listing the valid ones.
    """
    if isinstance(name, Mapping):
        kwargs = dict(name)
        name = kwargs.pop("name")
        overrides = {**kwargs, **overrides}
    _load_families()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(sorted(_MODELS))}")
    factory = build_norm_factory(norm)
    model = _MODELS[name](norm=factory, **overrides)
    factory.check_sites_used(getattr(model, "NORM_SITES", None))
    return model
