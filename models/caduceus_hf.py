"""``init_from`` for Caduceus's Hugging Face checkpoints (kuleshov-group/caduceus-ps_* and caduceus-ph_*;
``caduceus/modeling_caduceus.py`` and ``modeling_rcps.py`` of github.com/kuleshov-group/caduceus):
``CaduceusForMaskedLM`` (``caduceus.backbone...``, the LM head tied to the embedding),
``CaduceusForSequenceClassification`` (``score``) and the bare ``Caduceus``.

**The fused path's channel order.** Upstream's default ``fused_add_norm: true`` (the released configs) makes
``RCPSMambaBlock`` add-and-normalise the *second* half of the channels as the forward strand and the
first half, reverse-complemented, as the other; the residual it passes on has its halves swapped. Each
block therefore sees the halves in the order opposite to the previous block's, while our ``Block``
(models/caduceus.py) follows the unfused path (first half forward, every layer). A fused upstream block
computes what ours computes with the reverse-complemented weights: the norm's weight and bias reversed
over channels, ``in_proj``'s input channels and ``out_proj``'s output channels reversed, and the forward
and reverse scans exchanged (a reversed sequence turns one into the other). Upstream's first block sees
swapped halves (its residual starts as the embedding), so blocks 0, 2, 4, ... are mapped that way and
the others unchanged; after an even number of blocks the halves are back in order, as the final norm and
the LM head (unfused order in both paths) expect. An odd depth cannot be mapped (our head is the
embedding itself) and is refused. Caduceus-PH (no RC sharing) and unfused checkpoints map unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.formats import refuse, rename, show, strip_prefix

FORMAT = "hf_caduceus"
LAYOUT = "Caduceus Hugging Face state dict (modeling_caduceus.py)"
_SCAN = r"(conv1d\.(weight|bias)|x_proj\.weight|dt_proj\.(weight|bias)|A_log|D)"
_LAYER = r"backbone\.layers\.(\d+)\."
_RULES = [
    (r"backbone\.embeddings\.word_embeddings\.(embedding\.)?weight", "embed.weight"),
    (r"backbone\.embeddings\.word_embeddings\.complement_map", None),
    (_LAYER + r"mixer\.(submodule\.)?mamba_fwd\.(in_proj|out_proj)\.weight", r"layers.\1.mixer.\3.weight"),
    (_LAYER + r"mixer\.(submodule\.)?mamba_rev\.(in_proj|out_proj)\.weight", None),  # tied to mamba_fwd's
    (_LAYER + rf"mixer\.(submodule\.)?mamba_fwd\.{_SCAN}", r"layers.\1.mixer.fwd.\3"),
    (_LAYER + rf"mixer\.(submodule\.)?mamba_rev\.{_SCAN}", r"layers.\1.mixer.rev.\3"),
    (_LAYER + r"norm\.(submodule\.)?(weight|bias)", r"layers.\1.norm.\3"),
    (r"backbone\.norm_f\.(submodule\.)?(weight|bias)", r"norm_f.\2"),
    (r"lm_head\.(lm_head\.)?weight", None),  # tied to the embedding
    (r"lm_head\.complement_map", None),
    (r"score\.weight", "head.weight"),
]


def _unwrap(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(obj.get("state_dict"), Mapping):  # a Lightning checkpoint of the training code
        obj = strip_prefix(obj["state_dict"], "model.")
    return {("caduceus." + k if k.startswith("backbone.") else k): v for k, v in obj.items()}


def detect(obj: Mapping[str, Any], config: Mapping[str, Any] | None) -> bool:
    if config is not None:
        return config.get("model_type") == "caduceus"
    return any(str(k).startswith("caduceus.backbone.") and ".mamba_fwd." in k for k in _unwrap(obj))


def _rc_block(state: dict[str, torch.Tensor], i: int) -> None:
    """Block ``i``'s weights so that it computes, on our channel order, what upstream's fused block does."""
    p = f"layers.{i}."
    for key in [k for k in state if k.startswith(p + "norm.")]:
        state[key] = state[key].flip(0)
    state[p + "mixer.in_proj.weight"] = state[p + "mixer.in_proj.weight"].flip(1)
    state[p + "mixer.out_proj.weight"] = state[p + "mixer.out_proj.weight"].flip(0)
    for key in [k for k in state if k.startswith(p + "mixer.fwd.")]:
        rev = key.replace(".fwd.", ".rev.")
        state[key], state[rev] = state[rev], state[key]


def convert(obj: Mapping[str, Any], model: nn.Module, config: Mapping[str, Any] | None) -> dict:
    from models.caduceus import Caduceus

    if not isinstance(model, Caduceus):
        refuse(FORMAT, f"a Caduceus checkpoint cannot start a {type(model).__name__}", "use a model=caduceus_* preset")
    state = {k.removeprefix("caduceus."): v for k, v in _unwrap(obj).items()}
    out, held = rename(state, _RULES, FORMAT, LAYOUT)
    problems = []
    for key, value in held.items():
        if key.endswith("complement_map"):
            if not torch.equal(value.long(), model.complement.to(value.device)):
                problems.append(f"{key} {value.tolist()} is not ours {model.complement.tolist()}")
        else:
            embedding = [k for k in state if re.fullmatch(_RULES[0][0], k)]
            source = embedding[0] if key.startswith("lm_head") and embedding else key.replace("mamba_rev", "mamba_fwd")
            if source in state and not torch.equal(value, state[source]):
                problems.append(f"{key} is not tied to {source} (ours ties them)")
    if problems:
        refuse(FORMAT, "; ".join(problems[:4]), "this is not a Caduceus checkpoint our model can hold")
    config = dict(config or {})
    rcps = any(".word_embeddings.embedding." in k for k in state) or bool(config.get("rcps"))
    if rcps != model.rcps:
        refuse(
            FORMAT,
            f"the checkpoint has rcps={rcps}, the model {model.rcps}",
            "pick the matching caduceus_ps_* / caduceus_ph_* preset",
        )
    # Unfused RC blocks wrap the norm (``norm.submodule``); fused ones hold it bare. config.json says it too.
    unfused = any(re.fullmatch(_LAYER + r"norm\.submodule\.weight", k) for k in state)
    fused = config.get("fused_add_norm", not unfused)
    if rcps and fused:
        if model.n_layer % 2:
            refuse(
                FORMAT,
                f"a fused_add_norm checkpoint of odd depth ({model.n_layer}) leaves the strands swapped at the head",
                "only even depths (the released 4 and 16) map onto our unfused order",
            )
        for i in range(0, model.n_layer, 2):
            if f"layers.{i}.mixer.in_proj.weight" not in out:
                refuse(FORMAT, f"missing key(s) {show([f'backbone.layers.{i}.mixer...'])}", "is the file truncated?")
            _rc_block(out, i)
    # Upstream's RMSNorm has no bias: a norm of ours that has one (DyT) keeps its init, zero.
    norm_bias = re.compile(r"(layers\.\d+\.norm|norm_f)\.bias")
    if not any(norm_bias.fullmatch(k) for k in out):
        out.update({k: None for k in model.state_dict() if norm_bias.fullmatch(k)})
    return out
