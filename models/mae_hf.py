"""``init_from`` for Hugging Face ``ViTMAEForPreTraining`` checkpoints (e.g. facebook/vit-mae-base): the
encoder and decoder in our MAE names (models/mae.py), so the directory starts a ``MaskedAutoencoder`` or,
through the ViT's own filter (decoder dropped), a fine-tuning ``VisionTransformer``.

Files on the hub predate transformers 5 and name the blocks ``encoder.layer.<i>.attention.attention.query``
...; transformers 5 renames them on load (its ``conversion_mapping.py``, ``ViTModel`` and
``ViTMAEForPreTraining`` entries) and writes them back that way, the decoder's blocks as
``decoder.decoder_encoder.layer.<i>`` where the hub's files have ``decoder.decoder_layers.<i>``; all three
spellings are read here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.formats import check_layout, refuse
from models.mae import mae_from_hf

FORMAT = "hf_vitmae"
LAYOUT = "Hugging Face ViTMAEForPreTraining state dict"
# transformers < 5 names -> transformers 5 names (the order matters: "attention.output.dense" first).
_LEGACY = [
    (r"\.decoder_encoder\.layer\.", ".decoder_layers."),
    (r"\.encoder\.layer\.", ".layers."),
    (r"\.attention\.attention\.(query|key|value)\.", lambda m: f".attention.{m.group(1)[0]}_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]
_BLOCK = r"\d+\.(attention\.[qkvo]_proj|layernorm_(before|after)|mlp\.fc[12])\.(weight|bias)"
_PATTERN = (
    r"vit\.(embeddings\.(cls_token|position_embeddings|patch_embeddings\.projection\.(weight|bias))"
    rf"|layernorm\.(weight|bias)|layers\.{_BLOCK})"
    rf"|decoder\.(mask_token|decoder_pos_embed|decoder_(embed|norm|pred)\.(weight|bias)|decoder_layers\.{_BLOCK})"
)


def _modern(key: str) -> str:
    for pattern, new in _LEGACY:
        key = re.sub(pattern, new, key)
    return key


def detect(obj: Mapping[str, Any], config: Mapping[str, Any] | None) -> bool:
    if config is not None and config.get("model_type") == "vit_mae":
        return True
    return any(k.startswith("vit.embeddings.") for k in obj) and any(k.startswith("decoder.decoder_") for k in obj)


def convert(obj: Mapping[str, torch.Tensor], model: nn.Module, config: Mapping[str, Any] | None) -> dict:
    """The checkpoint in our MAE names (``model`` is not needed: a ViT's own filter drops the decoder)."""
    state = {_modern(k): v for k, v in obj.items()}
    check_layout(state, _PATTERN, FORMAT, LAYOUT)
    try:
        return mae_from_hf(state)
    except KeyError as e:  # a q_proj without its k_proj / v_proj: ours fuses the three
        refuse(FORMAT, f"missing key(s) {e}", "a block needs its query, key and value; is the file truncated?")
