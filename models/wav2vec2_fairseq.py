"""``init_from`` for fairseq's wav2vec 2.0 pretraining checkpoints (``wav2vec_small.pt``, ``libri960_big.pt``,
``wav2vec_vox_new.pt``; github.com/facebookresearch/fairseq ``fairseq/models/wav2vec/wav2vec2.py``): a dict
with the ``model`` state dict and the training config, ``cfg`` (a plain dict since fairseq 0.10) or
``args`` (an ``argparse.Namespace`` in older files).

Names: our models/wav2vec2.py keeps fairseq's except where a module is a ``nn.Sequential`` upstream:
``feature_extractor.conv_layers.<i>.0`` (conv) and ``.2`` (GroupNorm) or ``.2.1`` (LayerNorm between two
transposes), ``encoder.pos_conv.0`` (weight-normed conv: ``weight_g`` / ``weight_v``, or the
parametrization of newer PyTorch), the post-extract ``layer_norm``, ``encoder.layer_norm`` and
``quantizer.vars`` (transformers' ``convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py`` maps the
same names). The config's ``layer_norm_first``, ``extractor_mode`` and ``conv_bias`` must be the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from models.formats import refuse, rename
from models.wav2vec2_hf import NORM_LAYOUT, check_norm_layout

FORMAT = "fairseq_wav2vec2"
LAYOUT = "fairseq Wav2Vec2Model state dict"
_POS = "encoder.pos_conv.conv."
_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.(1\.)?(weight|bias)", r"feature_extractor.conv_layers.\1.norm.\3"),
    (r"layer_norm\.(weight|bias)", r"post_extract_norm.\1"),
    (r"(post_extract_proj|project_q|final_proj|quantizer\.weight_proj)\.(weight|bias)", r"\1.\2"),
    (r"mask_emb", "mask_emb"),
    (r"quantizer\.vars", "quantizer.codevectors"),
    (r"encoder\.pos_conv\.0\.bias", _POS + "bias"),
    (
        r"encoder\.pos_conv\.0\.(weight_g|parametrizations\.weight\.original0)",
        _POS + "parametrizations.weight.original0",
    ),
    (
        r"encoder\.pos_conv\.0\.(weight_v|parametrizations\.weight\.original1)",
        _POS + "parametrizations.weight.original1",
    ),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.(self_attn\.[qkv]_proj|self_attn\.out_proj|self_attn_layer_norm|fc[12]|final_layer_norm)"
        r"\.(weight|bias)",
        r"encoder.layers.\1.\2.\3",
    ),
]


def _config(obj: Mapping[str, Any]) -> dict[str, Any]:
    cfg = obj.get("cfg")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        return dict(cfg["model"])
    return dict(vars(obj["args"])) if obj.get("args") is not None else {}


def detect(obj: Mapping[str, Any], config: Mapping[str, Any] | None) -> bool:
    model = obj.get("model")
    return (
        config is None
        and isinstance(model, Mapping)
        and ("cfg" in obj or "args" in obj)
        and any(str(k).startswith("feature_extractor.conv_layers.0.0.") for k in model)
    )


def convert(obj: Mapping[str, Any], model: nn.Module, config: Mapping[str, Any] | None) -> dict:
    from models.wav2vec2 import Wav2Vec2

    if not isinstance(model, Wav2Vec2):
        refuse(FORMAT, f"a wav2vec 2.0 checkpoint cannot start a {type(model).__name__}", "use model=wav2vec2_*")
    state = obj["model"]
    check_norm_layout(model, {k: v for k, v in _config(obj).items() if k in NORM_LAYOUT}, FORMAT, "its config")
    return rename(state, _RULES, FORMAT, LAYOUT)[0]
