"""``init_from`` for HyenaDNA's released weights (github.com/HazyResearch/hyena-dna): the state dict of
``standalone_hyenadna.py``'s ``HyenaDNAModel`` (``backbone.embeddings.word_embeddings.weight``,
``backbone.layers.<i>.mixer.filter_fn.implicit_filter.<j>...``, ``backbone.ln_f``, and with ``use_head``
the classifier ``head.output_transform``), as in the hub's ``weights.ckpt`` (a Lightning checkpoint whose
``state_dict`` names it ``model.backbone...``; ``huggingface.py`` strips the ``model.``) and the
transformers port (``hyena.backbone...``, ``lm_head`` tied to the embedding).

Upstream's fixed buffers (the filter's positional features ``pos_emb.z`` / ``pos_emb.t`` and decay rates
``modulation.deltas``, registered with ``lr=0``) are recomputed by our model from its shapes; they must
equal the file's, else the file came from another ``l_max``, ``emb_dim`` or filter setting and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.formats import refuse, rename, strip_prefix

FORMAT = "hyenadna"
LAYOUT = "HyenaDNA state dict (standalone_hyenadna.py HyenaDNAModel)"
_FILTER = r"backbone\.layers\.(\d+)\.mixer\.filter_fn\."
# (upstream regex, our name); None: a buffer our model recomputes (checked), or a tied copy (checked).
_RULES = [
    (r"backbone\.embeddings\.word_embeddings\.weight", "embed.weight"),
    (r"backbone\.layers\.(\d+)\.(norm[12]|mlp\.fc[12])\.(weight|bias)", r"layers.\1.\2.\3"),
    (r"backbone\.layers\.(\d+)\.mixer\.(in_proj|out_proj|short_filter)\.(weight|bias)", r"layers.\1.mixer.\2.\3"),
    (_FILTER + r"bias", r"layers.\1.mixer.filter.bias"),
    (_FILTER + r"implicit_filter\.0\.(weight|bias)", r"layers.\1.mixer.filter.mlp_in.\2"),
    (_FILTER + r"implicit_filter\.2\.(weight|bias)", r"layers.\1.mixer.filter.mlp_hidden.0.\2"),
    (_FILTER + r"implicit_filter\.4\.(weight|bias)", r"layers.\1.mixer.filter.mlp_hidden.1.\2"),
    (_FILTER + r"implicit_filter\.6\.weight", r"layers.\1.mixer.filter.mlp_out.weight"),
    (_FILTER + r"implicit_filter\.1\.freq", r"layers.\1.mixer.filter.act.freq"),  # one Sin, shared
    (_FILTER + r"implicit_filter\.[35]\.freq", None),
    (_FILTER + r"(pos_emb\.[zt]|modulation\.deltas)", None),
    (r"backbone\.ln_f\.(weight|bias)", r"norm_f.\1"),
    (r"head\.output_transform\.(weight|bias)", r"head.\1"),
    (r"lm_head\.weight", None),
]
_BUFFERS = {"pos_emb.z": "z", "pos_emb.t": "t", "modulation.deltas": "deltas"}


def _unwrap(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(obj.get("state_dict"), Mapping):  # the Lightning checkpoint weights.ckpt
        obj = obj["state_dict"]
    for prefix in ("model.", "hyena."):
        obj = strip_prefix(obj, prefix)
    return obj


def detect(obj: Mapping[str, Any], config: Mapping[str, Any] | None) -> bool:
    state = _unwrap(obj)
    return "backbone.embeddings.word_embeddings.weight" in state and any(".mixer.filter_fn." in k for k in state)


def convert(obj: Mapping[str, Any], model: nn.Module, config: Mapping[str, Any] | None) -> dict:
    from models.hyena import HyenaDNA

    if not isinstance(model, HyenaDNA):
        refuse(FORMAT, f"a HyenaDNA checkpoint cannot start a {type(model).__name__}", "use a model=hyenadna_* preset")
    state = _unwrap(obj)
    out, held = rename(state, _RULES, FORMAT, LAYOUT)
    problems = []
    for key, value in held.items():
        if key.endswith(".freq"):  # the shared Sin's other uses
            first = re.sub(r"implicit_filter\.\d\.", "implicit_filter.1.", key)
            if first in state and not torch.equal(state[first], value):
                problems.append(f"{key} differs from {first} (upstream shares one Sin)")
        elif key == "lm_head.weight":
            if not torch.equal(value, state["backbone.embeddings.word_embeddings.weight"]):
                problems.append("lm_head.weight is not the embedding (ours ties them)")
        else:
            layer, name = re.fullmatch(_FILTER + r"(.+)", key).groups()
            own = getattr(model.layers[int(layer)].mixer.filter, _BUFFERS[name])
            if own.shape != value.shape or not torch.allclose(own.float(), value.float(), atol=1e-5):
                problems.append(f"{key} {tuple(value.shape)} is not our model's {tuple(own.shape)} buffer")
    if problems:
        refuse(
            FORMAT,
            "; ".join(problems[:4]),
            "build the model with the checkpoint's config.json (l_max = max_length + 2, emb_dim, filter_order)",
        )
    return out
