"""Weights from elsewhere: start a model from another run or a published model (``init_from``). The
generic part, in the engine (the trainer applies it); what is specific to one model (renaming another
library's names, checking a Hugging Face ``config.json``, exporting) lives in the model's own
``models/*_hf.py`` and is reached through the model's hooks (``init_from_state_dict``,
``check_hf_config``). The public face, with the exports, is ``dyt.weights``.

``init_from`` (top-level key of ``configs/train.yaml``; the trainer applies it on a fresh start only,
never on resume, and writes the report to ``<run_dir>/init_from.json``)::

    init_from: null                                    # the model's own init (default)
    init_from: runs/mae_vit_b/dyt/seed0                # a run dir: its newest checkpoint
    init_from: /ckpt/vit_base_patch16_224.safetensors  # a file: ours, or a plain state dict
                                                       #   (.pt / .pth / .bin / .safetensors)
    init_from: timm:vit_base_patch16_224               # timm's pretrained weights (needs the hub)
    init_from: /models/Llama-2-7b-hf                   # a local Hugging Face directory (config.json +
                                                       #   model.safetensors or pytorch_model.bin,
                                                       #   sharded or not), or a directory written by
                                                       #   export_llama_hf(format="dyt")
    init_from:                                         # the mapping form
      source: runs/mae_vit_b/dyt/seed0
      ignore: [head.*]      # glob patterns of keys that keep the model's own init: source keys that match
                            # are dropped, model keys that match may be missing (a new classification head)
      key: ema              # the entry of a checkpoint dict to read: our checkpoints hold "model" (the raw
                            # weights, the default, as MAE's main_finetune.py reads "model") and "ema";
                            # other files may name theirs ("teacher" in DINO's, "state_dict", ...)
      made_by: python train.py experiment=paper/mae_vit_b norm=dyt  # shown when the source is missing

What happens, in order:

1. The weights are read without unpickling anything that could run code (``torch.load(weights_only=True)``
   or safetensors); a ``module.`` / ``_orig_mod.`` prefix of every key (DDP, ``torch.compile``) is removed.
2. The model maps them to its own names if it defines ``init_from_state_dict(state, source) -> dict``
   (``source`` is the kind: ``dyt``, ``timm``, ``huggingface``, ``file``, or a published layout's
   ``FORMAT``, already renamed to ours): e.g. LLaMA renames Hugging Face names, ViT moves the final norm
   between ``norm`` and ``fc_norm``. A value ``None`` means "keep the model's own init for this key".
3. ``ignore`` patterns drop source keys and let model keys stay fresh.
4. A position embedding (a key ending in ``pos_embed``) of another grid size is resized bicubically over
   its 2-D grid, the class / prefix tokens kept as they are (as MAE's ``util/pos_embed.py`` does).
5. Norm conversion: a model with point-wise norms (DyT, Derf) started from a model with normalization
   layers (LayerNorm, RMSNorm; the source has none of the point-wise parameters) takes each norm's
   ``weight`` / ``bias`` into the DyT at the same site, while ``alpha`` (and Derf's ``shift``) keep their
   init -- what ``dyt.convert`` does to a live model. Fine-tuning a timm LayerNorm ViT as a DyT ViT is
   ``model=vit_b norm=dyt init_from=<timm file>``.
6. Everything else must match: missing, unexpected and mis-shaped keys are listed in one error.

Published checkpoints of the paper's families load in their released layouts: the modules that
``models.PUBLISHED_FORMATS`` registers with :func:`register_published_formats` (Hugging Face
``ViTMAEForPreTraining``, DINO's ``.pth`` files, Hugging Face ``Wav2Vec2ForPreTraining``, fairseq
wav2vec 2.0, HyenaDNA's and Caduceus's releases); each one's ``detect`` recognises a file or Hugging Face
directory, its ``convert`` renames it to our model's names before step 2 (docs/finetune.md lists the
commands).

An FSDP-sharded model cannot be loaded here: apply ``init_from`` to the whole model before sharding it.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from dyt.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, safe_load
from dyt.io import atomic_write_json

INIT_FROM_KEYS = ("source", "ignore", "key", "made_by")
REPORT_FILE = "init_from.json"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
# The published layouts (module docstring), by module name: each module has FORMAT, detect(obj, config)
# and convert(obj, model, config). The models package registers its own (``models.PUBLISHED_FORMATS``);
# the engine names none. A file is offered to them only when init_from.key is not set.
_PUBLISHED: list[str] = []
_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class InitFromError(RuntimeError):
    """``init_from`` cannot be applied: the source is missing or unreadable, or does not fit the model."""


@dataclass(frozen=True)
class InitFrom:
    """A parsed ``init_from`` config (see the module docstring)."""

    source: str
    ignore: tuple[str, ...] = ()
    key: str | None = None
    made_by: str | None = None


@dataclass
class InitReport:
    """What ``load_init_weights`` did; written to ``<run_dir>/init_from.json`` by :func:`record_init`.

    ``fresh`` lists the model keys that kept the model's own init, by reason (``ignore``,
    ``norm_conversion``, ``model``: the model's key filter asked for it); ``dropped`` the source keys
    ``ignore`` removed; ``interpolated`` the resized position embeddings (key -> [source shape, model shape]).
    """

    source: str
    kind: str
    path: str
    entry: str | None = None
    step: int | None = None
    model: str = ""
    model_filter: str | None = None
    ignore: list[str] = field(default_factory=list)
    loaded: int = 0
    fresh: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    interpolated: dict[str, list[list[int]]] = field(default_factory=dict)
    norm_conversion: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        parts = [f"init_from {self.source} ({self.kind}): loaded {self.loaded} tensors into {self.model}"]
        parts += [f"kept init of {len(keys)} key(s) ({why})" for why, keys in self.fresh.items()]
        parts += [f"resized {k} {a} -> {b}" for k, (a, b) in self.interpolated.items()]
        if self.norm_conversion:
            parts.append(self.norm_conversion)
        return "; ".join(parts)


def _plain(cfg: Any) -> Any:
    """An OmegaConf node as plain Python containers (the library does not depend on Hydra)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency of the project
        pass
    return cfg


def parse_init_from(cfg: Any) -> InitFrom | None:
    """The ``init_from`` config value (None, a string, a mapping or an :class:`InitFrom`) as an InitFrom."""
    cfg = _plain(cfg)
    if cfg is None or cfg == "" or isinstance(cfg, InitFrom):
        return cfg or None
    if isinstance(cfg, str | os.PathLike):
        return InitFrom(os.fspath(cfg))
    if not isinstance(cfg, Mapping) or not cfg.get("source"):
        raise InitFromError(
            f"init_from must be a path, 'timm:<model name>' or a mapping with a 'source' key; got {cfg!r}"
        )
    unknown = sorted(set(cfg) - set(INIT_FROM_KEYS))
    if unknown:
        raise InitFromError(f"init_from: unknown key(s) {unknown}; valid keys are: {', '.join(INIT_FROM_KEYS)}")
    ignore = cfg.get("ignore") or ()
    return InitFrom(
        source=os.fspath(cfg["source"]),
        ignore=(ignore,) if isinstance(ignore, str) else tuple(ignore),
        key=cfg.get("key"),
        made_by=cfg.get("made_by"),
    )


# ---- reading a source ------------------------------------------------------------------------------
def _pick_entry(obj: Any, key: str | None, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside a loaded file: ``obj[key]``, the file itself if it is one, or its ``model``
    / ``state_dict`` entry."""
    if not isinstance(obj, Mapping):
        raise InitFromError(f"init_from: {path} holds a {type(obj).__name__}, not a state dict")
    if key is None:
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), None
        key = next((k for k in ("model", "state_dict") if k in obj), None)
    if key not in obj or not isinstance(obj[key], Mapping):
        entries = ", ".join(sorted(str(k) for k, v in obj.items() if isinstance(v, Mapping))) or "none"
        wanted = f"no state dict entry {key!r}" if key else "no state dict, neither whole nor as 'model' / 'state_dict'"
        raise InitFromError(
            f"init_from: {path} holds {wanted}; its dict entries are: {entries}. Name one with init_from.key"
        )
    return dict(obj[key]), key


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors or (weights-only) torch file, or the shards a Hugging Face ``*.index.json`` names."""
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in _load_weight_file(path.parent / shard).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return safe_load(path)


def checkpoint_weights(ckpt: dict[str, Any], key: str) -> dict[str, torch.Tensor]:
    """The ``key`` weights (``model`` or ``ema``) of one of our checkpoints, as a full state dict."""
    if ckpt.get(key) is None:
        entries = [k for k in ("model", "ema") if ckpt.get(k) is not None]
        raise InitFromError(
            f"checkpoint {ckpt['path']} has no {key!r} weights (it has: {', '.join(entries)}); "
            "ask for one of those (init_from.key)"
        )
    # The EMA holds floating-point tensors only; integer buffers come from the raw model.
    return {**ckpt["model"], **ckpt[key]} if key == "ema" else ckpt[key]


def _read_timm(name: str) -> dict[str, torch.Tensor]:
    import timm

    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        raise InitFromError(
            f"init_from=timm:{name}: timm has no model {name!r}; list them with timm.list_models('{name[:3]}*')"
        ) from None
    except Exception as e:  # no network, no cached file, hub refused: all end the same way
        hub = getattr(timm.models.get_pretrained_cfg(name.split(".")[0]), "hf_hub_id", None) or name
        raise InitFromError(
            f"init_from=timm:{name}: timm could not fetch the pretrained weights ({type(e).__name__}); "
            f"download them where the Hugging Face hub is reachable (hf download {hub} model.safetensors) "
            "and pass the file: init_from=/path/to/model.safetensors"
        ) from None
    return model.state_dict()


def _variants_hint(path: Path) -> str:
    """Run dirs of the same experiment trained with other overrides (``runs/mae_digits+trainer.max_steps=5/
    dyt/seed0`` for ``runs/mae_digits/dyt/seed0``): a shortened stage 1 is named after its overrides."""
    if len(path.parts) < 3:
        return ""
    experiment = path.parents[1]
    found = sorted(experiment.parent.glob(f"{glob.escape(experiment.name)}+*/{path.parent.name}/{path.name}"))
    if found:
        return f"; or start from a run of it with other settings: init_from={found[0]}" + (
            f" ({len(found)} such run dirs)" if len(found) > 1 else ""
        )
    return "; or point init_from= at the run dir (or checkpoint) to start from"


def register_published_formats(modules: tuple[str, ...] | list[str]) -> None:
    """Offer the published layouts of ``modules`` (module names, see ``_PUBLISHED``) to ``init_from``."""
    _PUBLISHED.extend(m for m in modules if m not in _PUBLISHED)


def published_formats() -> tuple[str, ...]:
    """The registered published-layout modules, in the order they are tried."""
    return tuple(_PUBLISHED)


def _published(obj: Any, config: Mapping[str, Any] | None) -> Any:
    """The registered published-layout module whose layout ``obj`` (a loaded file or state dict) has, or None."""
    import importlib

    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        return None
    return next((m for m in map(importlib.import_module, _PUBLISHED) if m.detect(obj, config)), None)


def _read_source(spec: InitFrom, model: nn.Module) -> tuple[dict[str, torch.Tensor], InitReport]:
    """The source's state dict (a published layout already in ``model``'s names) and the report's
    description of where it came from."""
    if spec.source.startswith("timm:"):
        name = spec.source[len("timm:") :]
        return _read_timm(name), InitReport(spec.source, "timm", f"timm:{name}")
    path = Path(spec.source).expanduser()
    hint = f"; create it with: {spec.made_by}" if spec.made_by else ""
    if not path.exists():
        raise InitFromError(
            f"init_from: {path} does not exist (expected a run dir, a checkpoint or weight file, a local "
            f"Hugging Face directory or 'timm:<model name>'){hint}{_variants_hint(path)}"
        )
    config = path / "config.json"
    if path.is_dir() and config.is_file():  # Hugging Face, or our export (format "dyt")
        ours = json.loads(config.read_text()).get("format") == "dyt"
        found = next((path / f for f in _HF_WEIGHT_FILES if (path / f).is_file()), None)
        if found is None:
            raise InitFromError(
                f"init_from: {path} has a config.json but no weights; expected one of: {', '.join(_HF_WEIGHT_FILES)}"
            )
        state, hf_config = _load_weight_file(found), json.loads(config.read_text())
        fmt = None if ours else _published(state, hf_config)
        if fmt is not None:
            return fmt.convert(state, model, hf_config), InitReport(spec.source, fmt.FORMAT, str(found))
        return state, InitReport(spec.source, "dyt" if ours else "huggingface", str(found))
    if path.is_dir():  # a run dir, its checkpoints/ or a DCP checkpoint
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            raise InitFromError(f"init_from: {e}{hint}") from e
        key = spec.key or "model"
        state = checkpoint_weights(ckpt, key)
        return state, InitReport(spec.source, "dyt", ckpt["path"], entry=key, step=ckpt.get("step"))
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):  # DINO's and fairseq's "args"
        obj = _load_weight_file(path) if path.suffix == ".safetensors" else safe_load(path)
    fmt = _published(obj, None) if spec.key is None else None
    if fmt is not None:
        return fmt.convert(obj, model, None), InitReport(spec.source, fmt.FORMAT, str(path))
    if path.suffix == ".safetensors":
        return obj, InitReport(spec.source, "file", str(path))
    state, entry = _pick_entry(obj, spec.key, path)
    ours = isinstance(obj, Mapping) and {"model", "step", "config"} <= set(obj)
    step = obj.get("step") if ours else None
    return state, InitReport(spec.source, "dyt" if ours else "file", str(path), entry=entry, step=step)


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# ---- fitting the source to the model ---------------------------------------------------------------
def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Resize a (1, prefix + h*w, D) position embedding to ``grid``: bicubic over its square 2-D grid,
    the ``num_prefix_tokens`` class / register tokens kept as they are."""
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise InitFromError(f"cannot resize a position embedding of {patches.shape[1]} patch tokens: not a square grid")
    dim = patches.shape[-1]
    patches = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def _resize_pos_embeds(model: nn.Module, state: dict, own: dict, report: InitReport) -> None:
    """Resize, in ``state``, every ``*pos_embed`` whose token count differs from the model's."""
    for key, value in list(state.items()):
        target = own.get(key)
        if not key.endswith("pos_embed") or value is None or target is None or value.shape == target.shape:
            continue
        if value.dim() != 3 or value.shape[::2] != target.shape[::2]:
            continue  # not a token-count difference: the shape check reports it
        owner = model.get_submodule(key.rpartition(".")[0])
        prefix = getattr(owner, "num_prefix_tokens", 0)
        patches = target.shape[1] - prefix
        grid = tuple(getattr(getattr(owner, "patch_embed", None), "grid_size", ()) or ())
        if len(grid) != 2 or grid[0] * grid[1] != patches:
            side = math.isqrt(patches)
            grid = (side, side)
        state[key] = interpolate_pos_embed(value, grid, prefix)
        report.interpolated[key] = [list(value.shape), list(target.shape)]


def _check_hf_config(model: nn.Module, hf_dir: Path) -> None:
    """What a state dict does not show (heads, RoPE, activation, eps) must agree with the Hugging Face
    ``config.json``: asked of the model's own hook ``check_hf_config(config) -> list[str]`` (the
    disagreements, each with its fix; e.g. ``models/llama_hf.py``), when it has one."""
    check = getattr(model, "check_hf_config", None)
    if check is None:
        return
    wrong = check(json.loads((hf_dir / "config.json").read_text()))
    if wrong:
        raise InitFromError(f"init_from: {hf_dir}/config.json does not match the model: {'; '.join(wrong)}")


def _pointwise_only_keys(model: nn.Module) -> dict[str, str]:
    """Keys of the point-wise norms' own parameters (``alpha``, Derf's ``shift``), each -> its norm class."""
    out = {}
    for name, module in model.named_modules():
        if getattr(module, "pointwise", False):
            for key in module.state_dict():
                if key not in ("weight", "bias"):
                    out[f"{name}.{key}" if name else key] = type(module).__name__
    return out


def load_init_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any] | InitFrom,
    *,
    ignore: tuple[str, ...] | list[str] = (),
    key: str | None = None,
    key_filter: Callable[[dict, str], dict] | None = None,
) -> InitReport:
    """Load ``source``'s weights into ``model`` (in place); see the module docstring for sources and steps.

    Args:
        model: the freshly built, materialised (not meta, not FSDP-sharded) model.
        source: the ``init_from`` config value: a path, ``timm:<name>``, a mapping or an :class:`InitFrom`.
        ignore, key: as ``init_from.ignore`` / ``init_from.key``; added to those of a mapping ``source``.
        key_filter: maps the source state dict to the model's names in place of the model's own
            ``init_from_state_dict``.
    Returns the :class:`InitReport`. Raises :class:`InitFromError` naming what does not fit and how to fix it.
    """
    spec = parse_init_from(source)
    if spec is None:
        raise InitFromError("init_from: no source given")
    spec = replace(spec, ignore=spec.ignore + tuple(ignore), key=key or spec.key)
    if any(p.is_meta for p in model.parameters()):
        raise InitFromError("init_from: the model is on the meta device; materialise it (to_empty) first")
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise InitFromError("init_from: the model is already sharded (FSDP2); load the weights before sharding it")
    state, report = _read_source(spec, model)
    report.model, report.ignore = type(model).__name__, list(spec.ignore)
    if report.kind == "huggingface":
        _check_hf_config(model, Path(report.path).parent)
    state = _strip_wrapper_prefixes(state)

    mapper = key_filter or getattr(model, "init_from_state_dict", None)
    if mapper is not None:
        state = dict(mapper(dict(state), report.kind))
        report.model_filter = getattr(mapper, "__qualname__", repr(mapper))
    own = model.state_dict()
    fresh: dict[str, list[str]] = {}
    model_fresh = sorted(k for k, v in state.items() if v is None)
    if model_fresh:
        fresh["model"] = model_fresh
    state = {k: v for k, v in state.items() if v is not None}

    def ignored(k: str) -> bool:
        return any(fnmatch.fnmatchcase(k, pattern) for pattern in spec.ignore)

    report.dropped = sorted(k for k in state if ignored(k))
    state = {k: v for k, v in state.items() if not ignored(k)}
    kept = sorted(k for k in own if ignored(k) and k not in model_fresh)
    if kept:
        fresh["ignore"] = kept

    _resize_pos_embeds(model, state, own, report)

    pointwise = _pointwise_only_keys(model)
    if pointwise and not any(k in state for k in pointwise):
        conversion = sorted(k for k in pointwise if k not in model_fresh and k not in kept)
        if conversion:
            fresh["norm_conversion"] = conversion
            norms = "/".join(sorted(set(pointwise.values())))
            own_params = ", ".join(sorted({k.rpartition(".")[2] for k in conversion}))
            layers = len({k.rpartition(".")[0] for k in conversion})
            report.norm_conversion = (
                f"the source has no {norms} parameters: its norms' weight/bias initialise the "
                f"{layers} {norms} layer(s), whose {own_params} keep their init"
            )
    report.fresh = fresh
    report.loaded = len(state)

    keep_own = {k: own[k] for keys in fresh.values() for k in keys if k in own}
    try:
        load_model_state(model, {**keep_own, **state}, f"init_from {spec.source}")
    except CheckpointError as e:
        raise InitFromError(
            f"{e} To keep some of the model's own init (e.g. a classification head of another size), list "
            "their keys in init_from.ignore (glob patterns such as 'head.*')"
        ) from e
    return report


def record_init(report: InitReport, run_dir: str | os.PathLike) -> Path:
    """Write ``report`` to ``<run_dir>/init_from.json`` (rank 0, on a fresh start); returns the path."""
    path = Path(run_dir) / REPORT_FILE
    atomic_write_json(path, report.to_dict())
    return path
