"""Hugging Face ``Wav2Vec2ForPreTraining`` names for ``models.wav2vec2``: weights convert both ways
(``to_hf_state_dict`` / ``from_hf_state_dict``) and ``hf_config`` gives the matching config, for parity
tests and for ``init_from`` a local Hugging Face directory (``detect`` / ``convert``:
``models.PUBLISHED_FORMATS``; e.g. facebook/wav2vec2-base, saved by transformers < 5 with ``weight_g`` /
``weight_v``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from models.wav2vec2_layers import CONV_LAYERS

if TYPE_CHECKING:
    from models.wav2vec2 import Wav2Vec2

# (ours, Hugging Face) name prefixes; {} is a layer index.
_HF_PREFIXES = [
    ("feature_extractor.conv_layers.{}.conv.", "wav2vec2.feature_extractor.conv_layers.{}.conv."),
    ("feature_extractor.conv_layers.{}.norm.", "wav2vec2.feature_extractor.conv_layers.{}.layer_norm."),
    ("post_extract_norm.", "wav2vec2.feature_projection.layer_norm."),
    ("post_extract_proj.", "wav2vec2.feature_projection.projection."),
    ("mask_emb", "wav2vec2.masked_spec_embed"),
    ("encoder.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
    ("encoder.norm.", "wav2vec2.encoder.layer_norm."),
    ("encoder.layers.{}.self_attn.", "wav2vec2.encoder.layers.{}.attention."),
    ("encoder.layers.{}.self_attn_layer_norm.", "wav2vec2.encoder.layers.{}.layer_norm."),
    ("encoder.layers.{}.fc1.", "wav2vec2.encoder.layers.{}.feed_forward.intermediate_dense."),
    ("encoder.layers.{}.fc2.", "wav2vec2.encoder.layers.{}.feed_forward.output_dense."),
    ("encoder.layers.{}.final_layer_norm.", "wav2vec2.encoder.layers.{}.final_layer_norm."),
    ("quantizer.", "quantizer."),
    ("project_q.", "project_q."),
    ("final_proj.", "project_hid."),
]


def _unmapped(keys, pairs) -> list[str]:
    patterns = [re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)")) for src, _ in pairs]
    return [k for k in keys if not any(p.match(k) for p in patterns)]


def _rename_prefixes(state_dict: dict[str, torch.Tensor], pairs, what: str) -> dict[str, torch.Tensor]:
    patterns = [(re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)")), dst) for src, dst in pairs]
    out = {}
    for key, value in state_dict.items():
        for pattern, dst in patterns:
            match = pattern.match(key)
            if match:
                out[dst.format(*match.groups()) + key[match.end() :]] = value
                break
        else:
            raise KeyError(
                f"{what}: no equivalent for parameter {key!r}; only a norm=layernorm model converts "
                f"(Hugging Face wav2vec 2.0 has no DyT alpha)"
            )
    return out


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> Hugging Face ``Wav2Vec2ForPreTraining`` names (LayerNorm models only)."""
    return _rename_prefixes(state_dict, _HF_PREFIXES, "to_hf_state_dict")


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Wav2Vec2ForPreTraining`` state dict -> our names (load into a ``norm=layernorm`` model).
    Hub checkpoints saved with the old ``weight_norm`` name its magnitude and direction ``weight_g`` /
    ``weight_v``; they become the parametrization's ``original0`` / ``original1``."""
    legacy = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
    renamed = {}
    for key, value in state_dict.items():
        suffix = key[-9:]
        renamed[key[:-9] + legacy[suffix] if suffix in legacy else key] = value
    return _rename_prefixes(renamed, [(hf, ours) for ours, hf in _HF_PREFIXES], "from_hf_state_dict")


def hf_config(model: Wav2Vec2, **overrides):
    """The ``transformers.Wav2Vec2Config`` with ``model``'s shapes (dropouts and masking from ``overrides``)."""
    from transformers import Wav2Vec2Config

    layer = model.encoder.layers[0]
    conv = model.encoder.pos_conv.conv
    return Wav2Vec2Config(
        hidden_size=model.final_proj.in_features,
        num_hidden_layers=len(model.encoder.layers),
        num_attention_heads=layer.self_attn.num_heads,
        intermediate_size=layer.fc1.out_features,
        feat_extract_norm="layer" if model.feature_extractor.conv_layers[1].norm is not None else "group",
        do_stable_layer_norm=layer.layer_norm_first,
        conv_dim=(model.post_extract_proj.in_features,) * len(CONV_LAYERS),
        conv_bias=model.feature_extractor.conv_layers[0].conv.bias is not None,
        num_conv_pos_embeddings=conv.kernel_size[0],
        num_conv_pos_embedding_groups=conv.groups,
        num_codevector_groups=model.quantizer.groups,
        num_codevectors_per_group=model.quantizer.num_vars,
        codevector_dim=model.project_q.in_features,
        proj_codevector_dim=model.project_q.out_features,
        contrastive_logits_temperature=model.logit_temp,
        num_negatives=model.num_negatives,
        **overrides,
    )


# ---- init_from (models.PUBLISHED_FORMATS) -------------------------------------------------------
FORMAT = "hf_wav2vec2"
NORM_LAYOUT = {"layer_norm_first": False, "extractor_mode": "default", "conv_bias": False}  # fairseq's defaults


def check_norm_layout(model: Wav2Vec2, theirs: dict, fmt: str, where: str) -> None:
    """What the weights do not show (pre- or post-norm blocks, the conv encoder's norms, conv bias) must be
    ``model``'s: ``theirs`` in fairseq's terms (``NORM_LAYOUT``; absent fields take fairseq's defaults)."""
    from models.formats import refuse

    theirs = {**NORM_LAYOUT, **theirs}
    ours = {
        "layer_norm_first": model.encoder.layer_norm_first,
        "extractor_mode": "layer_norm" if model.feature_extractor.conv_layers[1].norm is not None else "default",
        "conv_bias": model.feature_extractor.conv_layers[0].conv.bias is not None,
    }
    wrong = [f"{k} {theirs[k]} vs {v} in the model" for k, v in ours.items() if theirs[k] != v]
    if wrong:
        refuse(
            fmt,
            f"{where} does not match the model: {'; '.join(wrong)}",
            "set model.layer_norm_first / extractor_mode / conv_bias to the checkpoint's (wav2vec2_base is "
            "Base's, wav2vec2_large the Large and LV-60 releases')",
        )


def _is_wav2vec2(model) -> bool:
    """A ``models.wav2vec2.Wav2Vec2``, known by its parts (this module is imported by that one)."""
    return all(hasattr(model, part) for part in ("feature_extractor", "quantizer", "post_extract_proj", "mask_emb"))


def detect(obj, config) -> bool:
    if config is not None:
        return config.get("model_type") == "wav2vec2"
    return any(str(k).startswith("wav2vec2.feature_extractor.") for k in obj)


def convert(obj, model: Wav2Vec2, config) -> dict[str, torch.Tensor]:
    """A ``Wav2Vec2ForPreTraining`` state dict in our names; its config.json's layout (what the weights do not
    show: pre- or post-norm blocks, the conv encoder's norms) must be ``model``'s."""
    from models.formats import refuse, show

    if not _is_wav2vec2(model):
        refuse(FORMAT, f"a wav2vec 2.0 checkpoint cannot start a {type(model).__name__}", "use model=wav2vec2_*")
    unexpected = _unmapped(
        obj, [(hf, ours) for ours, hf in _HF_PREFIXES] + [("wav2vec2.encoder.pos_conv_embed.conv.weight_", "")]
    )
    if unexpected:
        refuse(FORMAT, f"unexpected key(s) {show(unexpected)}", "only Wav2Vec2ForPreTraining's weights map to ours")
    if config is not None:
        theirs = {
            "layer_norm_first": config.get("do_stable_layer_norm", False),
            "extractor_mode": "layer_norm" if config.get("feat_extract_norm", "group") == "layer" else "default",
            "conv_bias": config.get("conv_bias", False),
        }
        check_norm_layout(model, theirs, FORMAT, "config.json (do_stable_layer_norm, feat_extract_norm, conv_bias)")
    return from_hf_state_dict(dict(obj))
