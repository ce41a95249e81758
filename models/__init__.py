"""Architectures, one file per family, and the registry of their size presets.

Every preset is a one-line function registered with ``@register_model`` at the end of its family's
file (``vit_b``, ``convnext_t``, ``llama2_7b``, ``dit_xl2``, ...). Every constructor takes ``norm``: a
norm factory, a norm name or a ``configs/norm`` mapping (see ``dyt.nn.factory``).

    model = models.create_model("vit_b", norm="dyt", num_classes=10)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from dyt.nn import build_norm_factory

# Family modules whose presets register on import.
FAMILIES = ("vit", "convnext", "dit", "llama")

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_loaded = False


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
    factory.check_sites_used()
    return model
