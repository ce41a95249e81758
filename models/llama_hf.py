"""LLaMA and Hugging Face: ``LlamaForCausalLM`` parameter names (both ways), the ``config.json`` check of
``init_from`` (reached through ``Llama.check_hf_config``) and the export writer behind
``dyt.weights.export_llama_hf``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dyt.io import atomic_write_json
from dyt.nn import RMSNorm

if TYPE_CHECKING:
    from models.llama import Llama

# (ours, Hugging Face LlamaForCausalLM) parameter names; {} is the layer index.
_HF_NAMES = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("layers.{}.attention_norm.weight", "model.layers.{}.input_layernorm.weight"),
    ("layers.{}.attention.wq.weight", "model.layers.{}.self_attn.q_proj.weight"),
    ("layers.{}.attention.wk.weight", "model.layers.{}.self_attn.k_proj.weight"),
    ("layers.{}.attention.wv.weight", "model.layers.{}.self_attn.v_proj.weight"),
    ("layers.{}.attention.wo.weight", "model.layers.{}.self_attn.o_proj.weight"),
    ("layers.{}.ffn_norm.weight", "model.layers.{}.post_attention_layernorm.weight"),
    ("layers.{}.feed_forward.w1.weight", "model.layers.{}.mlp.gate_proj.weight"),
    ("layers.{}.feed_forward.w2.weight", "model.layers.{}.mlp.down_proj.weight"),
    ("layers.{}.feed_forward.w3.weight", "model.layers.{}.mlp.up_proj.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
]


def _rename(state_dict: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename keys by ``pairs`` of name patterns; a key no pattern matches keeps its name."""
    patterns = [(re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)") + "$"), dst) for src, dst in pairs]
    out = {}
    for key, value in state_dict.items():
        match, dst = next(((m, dst) for pattern, dst in patterns if (m := pattern.match(key))), (None, None))
        out[dst.format(*match.groups()) if match else key] = value
    return out


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> Hugging Face ``LlamaForCausalLM`` names (RMSNorm models without embed scale only)."""
    hf_names = {hf for _, hf in _HF_NAMES}
    out = _rename(state_dict, _HF_NAMES)
    extra = sorted(k for k in out if re.sub(r"\.\d+\.", ".{}.", k) not in hf_names)
    if extra:
        raise ValueError(
            f"this LLaMA has parameters that Hugging Face's LlamaForCausalLM cannot hold: {', '.join(extra[:6])}"
            f"{' ...' if len(extra) > 6 else ''} (that class has RMSNorm without bias at every norm site and no "
            "embed scale). Export it with dyt.weights.export_llama_hf(..., format='dyt') (safetensors + a "
            "config.json with the norm), which models.create_model + dyt.weights.load_init_weights read back"
        )
    return out


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``LlamaForCausalLM`` state dict -> our names; a key without an equivalent keeps its name
    (so loading reports it as unexpected). A checkpoint with tied embeddings (no ``lm_head.weight``, e.g.
    Llama 3.2 1B) gives our untied head a copy of the embedding."""
    state = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return _rename(state, [(hf, ours) for ours, hf in _HF_NAMES])


def hf_config(model: Llama) -> Any:
    """The ``transformers.LlamaConfig`` describing ``model``'s shapes (untied head, RoPE theta, eps)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=model.vocab_size,
        hidden_size=model.dim,
        intermediate_size=model.hidden_dim,
        num_hidden_layers=len(model.layers),
        num_attention_heads=model.n_heads,
        num_key_value_heads=model.n_kv_heads,
        rms_norm_eps=model.eps,
        rope_theta=model.rope_theta,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )


def check_hf_config(model: Llama, config: dict[str, Any]) -> list[str]:
    """What a Llama state dict does not show (heads, RoPE, activation, eps) must agree with a Hugging Face
    ``config.json`` (the hook ``Llama.check_hf_config`` that ``init_from`` asks): each disagreement, with
    its fix; none for a config of another model type."""
    if config.get("model_type") != "llama":
        return []
    # transformers 5 keeps rope_theta in rope_parameters; older versions at the top level + rope_scaling.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    heads = config.get("num_attention_heads")
    found = {
        "num_attention_heads": (heads, model.n_heads, "model.n_heads"),
        "num_key_value_heads": (config.get("num_key_value_heads") or heads, model.n_kv_heads, "model.n_kv_heads"),
        "rope_theta": (
            float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
            model.rope_theta,
            "model.rope_theta",
        ),
        "rope_type": (rope.get("rope_type", rope.get("type", "default")), "default", None),
        "hidden_act": (config.get("hidden_act", "silu"), "silu", None),
    }
    eps = {m.eps for m in model.modules() if getattr(m, "pointwise", True) is False and hasattr(m, "eps")}
    if len(eps) == 1:
        found["rms_norm_eps"] = (config.get("rms_norm_eps"), eps.pop(), "model.eps")
    return [
        f"{name} {theirs} vs {ours} in the model ("
        + (f"set {fix}={theirs}" if fix else "models/llama.py supports only the latter")
        + ")"
        for name, (theirs, ours, fix) in found.items()
        if theirs != ours
    ]


def hf_refusal(model: Llama) -> str | None:
    """Why Hugging Face's ``LlamaForCausalLM`` cannot hold ``model`` (a Llama of ours), or None if it can."""
    norms = [*(n for layer in model.layers for n in (layer.attention_norm, layer.ffn_norm)), model.norm]
    others = sorted({type(n).__name__ for n in norms if not isinstance(n, RMSNorm)})
    if others:
        return f"its norms are {', '.join(others)}, and LlamaForCausalLM has an RMSNorm at every norm site"
    if model.embed_scale is not None:
        return "it multiplies the embeddings by a learned scalar (embed_scale), which LlamaForCausalLM lacks"
    if any(n.weight is None or n.bias is not None for n in norms) or len({n.eps for n in norms}) > 1:
        return "its RMSNorms are not all 'weight, no bias, one eps' as LlamaForCausalLM's are"
    return None


def write_export(model: Llama, out: Path, format: str, model_cfg: Any, norm_cfg: Any) -> None:
    """Write ``model`` to ``out`` as ``config.json`` + ``model.safetensors``: a Hugging Face
    ``LlamaForCausalLM`` directory (``format="hf"``) or our names and configs (``"dyt"``; the model and
    norm configs as plain containers)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if format == "hf":
        config = hf_config(model)
        config.rms_norm_eps = model.norm.eps  # the eps the norms were built with (a norm config may set it)
        config.save_pretrained(out)
        save_file(to_hf_state_dict(state), out / "model.safetensors", metadata={"format": "pt"})
        return
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    norm_layer = type(model.norm)
    atomic_write_json(
        out / "config.json",
        {
            "format": "dyt",  # not a transformers model type: transformers' Auto classes refuse it
            "model": {"name": model_cfg} if isinstance(model_cfg, str) else dict(model_cfg),
            "norm": {"name": norm_cfg} if isinstance(norm_cfg, str) else dict(norm_cfg),
            "norm_layer": f"{norm_layer.__name__}: {(norm_layer.__doc__ or '').strip().splitlines()[0]}",
            "norm_sites": {"attn": "layers.<i>.attention_norm", "ffn": "layers.<i>.ffn_norm", "final": "norm"},
            "embed_scale": "embed_scale (learned; multiplies the token embeddings)"
            if model.embed_scale is not None
            else None,
        },
    )
