"""The norm factory every model receives: ``norm(dim, site=..., layout=...) -> nn.Module``.

Models never name a norm class. They ask the factory for "the norm at this site, of this width" and
may pass *hints* for that site (``affine=False`` in DiT, ``bias=False`` and a width-dependent
``alpha_init`` in LLaMA, ``eps=1e-6`` in timm models). A hint that the chosen norm does not take is
dropped, so a model can state LayerNorm's eps and LLaMA's alpha without knowing which norm it gets.

Settings are merged, later winning:
    class defaults  <  model hints  <  config options  <  config ``sites.<site>`` options
Config options are strict: an option the chosen norm does not accept is an error that lists the
accepted ones. A ``null`` config option means "not set" (the model's hint or the class default).

``alpha_init: calibrate`` (at the top or for a site) builds the layer with the alpha it would otherwise
get and marks it with ``calibrate_to`` (the ``calibrate_to`` option, default :data:`CALIBRATE_TO`): the
trainer then sets its alpha from its input's std on the first training batch (``dyt.nn.calibrate``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from dyt.nn.norms import check_layout
from dyt.nn.registry import get_norm_class

# Arguments the factory itself supplies; never config options.
_RESERVED = {"dim", "layout", "device", "dtype"}
CALIBRATE = "calibrate"
# Target of alpha * input std for alpha_init=calibrate: what alpha 0.5 gives at init at the DyT layers of
# the paper's ViT-B (median 0.26 over its 25 layers, 0.19-0.30; scripts/analysis/scale_probe.py vit_b), where
# the paper's constant is known to work (Table 1).
CALIBRATE_TO = 0.3


def _options_of(cls: type[nn.Module]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {p for p in params if p != "self"} - _RESERVED


def _plain(cfg: Any) -> dict[str, Any]:
    """An OmegaConf node or mapping as a plain dict (no Hydra dependency in the library)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency, but the library does not need it
        pass
    return dict(cfg)


class NormFactory:
    """Builds the configured norm at every site of a model. See the module docstring for precedence."""

    def __init__(
        self, name: str, options: Mapping[str, Any] | None = None, sites: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self.name = name
        self.cls = get_norm_class(name)
        self._accepted = _options_of(self.cls)
        options = {k: v for k, v in (options or {}).items() if v is not None}
        if "alpha_init" not in self._accepted and (
            "calibrate_to" in options or any((o or {}).get("calibrate_to") is not None for o in (sites or {}).values())
        ):
            raise ValueError(f"calibrate_to: norm {self.name!r} has no alpha to calibrate (dyt and derf have)")
        self.calibrate_to = {None: _target(options.pop("calibrate_to", CALIBRATE_TO), "norm.calibrate_to")}
        for site, opts in (sites or {}).items():
            if opts and opts.get("calibrate_to") is not None:
                self.calibrate_to[site] = _target(opts["calibrate_to"], f"norm.sites.{site}.calibrate_to")
        self.options = self._checked(options, "norm")
        self.sites = {
            site: self._checked({k: v for k, v in (opts or {}).items() if k != "calibrate_to"}, f"norm.sites.{site}")
            for site, opts in (sites or {}).items()
        }
        self.used_sites: set[str] = set()
        self._built: dict[str, dict[str, Any]] = {}  # JSON of one build -> its record (see resolved())

    def _checked(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        unknown = sorted(set(options) - self._accepted)
        if unknown:
            raise ValueError(
                f"{where}: option(s) {unknown} are not accepted by norm {self.name!r}; "
                f"valid options are: {', '.join(sorted(self._accepted))}"
            )
        alpha = options.get("alpha_init")
        if alpha is not None and alpha != CALIBRATE:
            try:
                ok = float(alpha) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(
                    f"{where}.alpha_init={alpha!r}: give a positive number (the paper's default is 0.5) or "
                    f"'{CALIBRATE}' (alpha from the input std on the first training batch)"
                )
        return options

    @property
    def pointwise(self) -> bool:
        """True for statistics-free norms (DyT, Derf): the paper's recipe quirks key on this."""
        return bool(getattr(self.cls, "pointwise", False))

    def settings(self, site: str, **hints: Any) -> dict[str, Any]:
        """The merged keyword arguments the norm at ``site`` is built with."""
        merged = {k: v for k, v in hints.items() if k in self._accepted}
        merged.update(self.options)
        merged.update(self.sites.get(site, {}))
        return merged

    def __call__(
        self, dim: int, site: str = "block", layout: str = "channels_last", *, device=None, dtype=None, **hints: Any
    ) -> nn.Module:
        self.used_sites.add(site)
        settings = self.settings(site, **hints)
        calibrate = settings.get("alpha_init") == CALIBRATE
        if calibrate:  # built with the alpha it would have had, until the trainer calibrates it
            settings.pop("alpha_init")
            for source in (self.options, hints):
                if source.get("alpha_init") not in (None, CALIBRATE):
                    settings["alpha_init"] = source["alpha_init"]
                    break
        module = self.cls(dim, layout=check_layout(layout), device=device, dtype=dtype, **settings)
        if calibrate:
            module.calibrate_to = self.calibrate_to.get(site, self.calibrate_to[None])
            settings = {**settings, "alpha_init": CALIBRATE, "calibrate_to": module.calibrate_to}
        self._record(site, layout, settings)
        return module

    def _record(self, site: str, layout: str, settings: dict[str, Any]) -> None:
        extra = {k: settings.pop(k) for k in ("calibrate_to",) if k in settings}
        bound = inspect.signature(self.cls.__init__).bind_partial(None, 0, **settings)
        bound.apply_defaults()
        options = {k: v for k, v in bound.arguments.items() if k in self._accepted} | extra
        record = {"site": site, "norm": self.name, "class": self.cls.__name__, "layout": layout, **options}
        key = json.dumps(record, sort_keys=True, default=str)
        self._built.setdefault(key, {**record, "count": 0})["count"] += 1

    def resolved(self) -> list[dict[str, Any]]:
        """Every distinct norm this factory built: its site, class, layout and every option it was built
        with (class defaults included, e.g. the ``alpha_init`` actually used at each site), and how many
        layers got it; in build order. What a run resolved from hints and config, for its run dir."""
        return [dict(record) for record in self._built.values()]

    def check_sites_used(self, declared: Sequence[str] | None = None) -> None:
        """Raise if the config set options for a site that no layer of the model asked for (a typo).

        ``declared``: the model's own list of its sites (``NORM_SITES``); a layer built at a site not in
        it is a bug of the model (its list, the docs' table, would be wrong), also an error."""
        if declared is not None and self.used_sites - set(declared):
            raise ValueError(
                f"the model built norms at site(s) {sorted(self.used_sites - set(declared))} that its "
                f"NORM_SITES ({', '.join(declared)}) does not list; add them there and to the README's table"
            )
        unused = sorted(set(self.sites) - self.used_sites)
        if unused:
            raise ValueError(
                f"norm.sites names site(s) {unused} that this model does not have; "
                f"its sites are: {', '.join(sorted(self.used_sites))}"
            )

    def __repr__(self) -> str:
        return f"NormFactory({self.name!r}, options={self.options}, sites={self.sites})"


def _target(value: Any, where: str) -> float:
    try:
        target = float(value)
    except (TypeError, ValueError):
        target = -1.0
    if not target > 0:
        raise ValueError(f"{where}={value!r}: give a positive number, the alpha x input std to calibrate to")
    return target


def build_norm_factory(cfg: NormFactory | str | Mapping[str, Any] | None = None) -> NormFactory:
    """A factory from a norm name, a ``configs/norm/*.yaml`` mapping (``name``, optional ``tag``, options,
    ``sites``), or an existing factory. ``None`` means LayerNorm."""
    if isinstance(cfg, NormFactory):
        return cfg
    if cfg is None:
        return NormFactory("layernorm")
    if isinstance(cfg, str):
        return NormFactory(cfg)
    options = _plain(cfg)
    if "name" not in options:
        raise ValueError(f"a norm config needs a 'name' key (one of the registered norms); got keys {sorted(options)}")
    name = options.pop("name")
    sites = options.pop("sites", None)
    options.pop("tag", None)  # the label of this norm config in run dirs and tables, not a layer option
    return NormFactory(name, options, sites)


def norm_tag(cfg: str | Mapping[str, Any]) -> str:
    """The label of a norm config in run dirs, W&B and tables: its ``tag`` (ablations of one norm class
    differ, e.g. ``dyt_hardtanh``), else its ``name``; a plain name is its own tag."""
    if isinstance(cfg, str):
        return cfg
    tag = cfg.get("tag") or cfg.get("name")
    if not tag:
        raise ValueError(f"a norm config needs a 'name' (and usually a 'tag'); got keys {sorted(cfg)}")
    return str(tag)
