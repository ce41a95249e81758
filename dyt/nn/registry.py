"""Name -> class registry of every norm layer a config can ask for."""

from __future__ import annotations

from torch import nn

_NORMS: dict[str, type[nn.Module]] = {}


def register_norm(name: str):
    """Class decorator: make a norm buildable as ``norm=<name>``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _NORMS:
            raise ValueError(f"norm {name!r} is registered twice ({_NORMS[name].__name__} and {cls.__name__})")
        _NORMS[name] = cls
        return cls

    return add


def norm_names(layout: str | None = None) -> list[str]:
    """The registered norm names, sorted; with ``layout``, only the norms that can be built in it (a class
    lists its ``layouts`` when it cannot be built in both, as BatchNorm: ``channels_first``)."""
    return sorted(
        name for name, cls in _NORMS.items() if layout is None or layout in getattr(cls, "layouts", (layout,))
    )


def get_norm_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; an unknown name raises listing the valid ones."""
    try:
        return _NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; valid norms are: {', '.join(norm_names())}") from None
