"""Weights in and out: ``init_from`` (another run, a file, timm, a Hugging Face directory; the generic
part lives in the engine, ``dyt/engine/weights.py``, where the trainer applies it) and the LLaMA export
(``export_llama_hf``, read back by ``load_exported``; the LLaMA-specific names, config and writer live in
``models/llama_hf.py``). docs/finetune.md shows both."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from dyt.engine.weights import (
    INIT_FROM_KEYS,
    REPORT_FILE,
    InitFrom,
    InitFromError,
    InitReport,
    checkpoint_weights,
    interpolate_pos_embed,
    load_init_weights,
    parse_init_from,
    record_init,
)
from models import PUBLISHED_FORMATS

__all__ = [
    "EXPORT_FORMATS",
    "INIT_FROM_KEYS",
    "REPORT_FILE",
    "InitFrom",
    "InitFromError",
    "InitReport",
    "PUBLISHED_FORMATS",
    "checkpoint_weights",
    "export_llama_hf",
    "interpolate_pos_embed",
    "load_exported",
    "load_init_weights",
    "parse_init_from",
    "record_init",
]

EXPORT_FORMATS = ("auto", "hf", "dyt")


def _plain(cfg: Any) -> Any:
    """A config (OmegaConf node or mapping) as plain Python containers; a preset name (or None) as it is."""
    from omegaconf import OmegaConf

    if cfg is None or isinstance(cfg, str):
        return cfg
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def export_llama_hf(
    model_or_run_dir: nn.Module | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    format: str = "auto",
    key: str = "model",
    model_cfg: str | Mapping[str, Any] | None = None,
    norm_cfg: str | Mapping[str, Any] | None = None,
) -> str:
    """Write a LLaMA of ours to ``out_dir`` as ``config.json`` + ``model.safetensors``; returns the format.

    Formats:
        ``hf``: a Hugging Face ``LlamaForCausalLM`` directory (``from_pretrained`` loads it and gives our
            logits). Only an RMSNorm model without embed scale fits; others are refused, saying why.
        ``dyt``: our parameter names (DyT's ``alpha``, ``weight``, ``bias`` per site, ``embed_scale``) and a
            config.json holding the model and norm configs; :func:`load_exported` (or ``init_from=<dir>``
            into ``models.create_model(config["model"], norm=config["norm"])``) reads it back.
        ``auto``: ``hf`` when the model fits, else ``dyt``.

    ``model_or_run_dir``: a model, or a run dir / checkpoint (its ``key`` weights, ``model`` or ``ema``;
    the model and norm configs come from the checkpoint unless ``model_cfg`` / ``norm_cfg`` replace them).
    A model exported as ``dyt`` needs ``model_cfg`` and ``norm_cfg``: the preset (or ``configs/model``
    mapping) and the norm config it was built with.
    """
    from models.llama import Llama
    from models.llama_hf import hf_refusal, write_export

    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats are: {', '.join(EXPORT_FORMATS)}")
    if isinstance(model_or_run_dir, nn.Module):
        model = model_or_run_dir
    else:
        from dyt.tasks import load_run

        if key not in ("model", "ema"):
            raise InitFromError(f"export_llama_hf: key={key!r}; a checkpoint of ours holds 'model' and 'ema' weights")
        replace = {k: v for k, v in (("model", model_cfg), ("norm", norm_cfg)) if v is not None}
        model, _, ckpt = load_run(model_or_run_dir, weights="ema" if key == "ema" else "raw", overrides=replace)
        model_cfg, norm_cfg = (
            ckpt["config"]["model"] if model_cfg is None else model_cfg,
            norm_cfg or ckpt["config"]["norm"],
        )
    if not isinstance(model, Llama):
        raise ValueError(f"export_llama_hf exports LLaMA models (models/llama.py); got a {type(model).__name__}")
    refusal = hf_refusal(model)
    if format == "auto":
        format = "dyt" if refusal else "hf"
    if format == "hf" and refusal:
        raise ValueError(
            f"cannot export this LLaMA as a Hugging Face LlamaForCausalLM: {refusal}. Export it with "
            "format='dyt' (safetensors + a config.json with the norm), which dyt.weights.load_exported reads back"
        )
    if format == "dyt" and (model_cfg is None or norm_cfg is None):
        raise ValueError(
            "format='dyt' from a model object needs model_cfg and norm_cfg (the preset name or configs/model "
            "mapping and the norm config it was built with), so that the export can be rebuilt; or export its run dir"
        )
    write_export(model, Path(out_dir), format, _plain(model_cfg), _plain(norm_cfg))
    return format


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The model of a directory written by ``export_llama_hf(..., format="dyt")``, weights loaded."""
    import json

    import models

    path = Path(path)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config.get("format") != "dyt":
        raise ValueError(
            f'{path} is not a dyt export (its config.json lacks "format": "dyt"); load a Hugging Face '
            "directory with transformers, or into a model of ours with init_from=<dir>"
        )
    model = models.create_model(config["model"], norm=config["norm"])
    load_init_weights(model, path)
    return model
