"""LLaMA-2 with any norm: pre-norm decoder, SwiGLU FFN, rotary positions, grouped-query attention.

The paper's LLaMA runs (Table 4) use the LLaMA-2 7B/13B/34B/70B shapes of IBM's fms-fsdp and replace
each RMSNorm by DyT without a bias (paper Sec. 4). Every norm comes from the factory at one of the
sites of ``Llama.NORM_SITES``.

With a point-wise norm (DyT, Derf) two recipe quirks of the paper apply:
- ``alpha_init`` defaults by model width (Table 11; Table 10 for the four paper sizes): the ``attn``
  site takes the "attention" value, ``ffn`` and ``final`` the "other" value. Config values
  (``norm.alpha_init``, ``norm.sites.<site>.alpha_init``) win over these width defaults.
- a learnable scalar after the embedding, initialised to sqrt(d) (App. A, ``embed_scale``).

Parameter names follow Meta's reference code (``tok_embeddings``, ``attention.wq``, ``feed_forward.w1``);
RoPE rotates halves as Hugging Face does, so ``to_hf_state_dict`` / ``from_hf_state_dict`` only rename
(``models/llama_hf.py``: Hugging Face names, config check and export).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dyt.nn import NormFactory, build_norm_factory
from models import deferred_init, embed_scale_init, register_model
from models.flops import matmul_params, transformer_flops_per_token
from models.llama_hf import check_hf_config, from_hf_state_dict

# Paper Table 11 (alpha_init against width; depth does not matter): width -> (attention, other).
# 5120 is LLaMA 13B's Table 10 row. A width between rows takes the row of the nearest width below it,
# a width under 1024 takes the 1024 row: both keep alpha_init at or above the tuned value for the
# next wider model, the direction in which the paper found training still stable.
ALPHA_INIT_BY_WIDTH = {1024: (1.0, 1.0), 2048: (1.0, 0.5), 4096: (0.8, 0.2), 5120: (0.6, 0.15), 8192: (0.2, 0.05)}


def alpha_init_for_width(dim: int) -> tuple[float, float]:
    """(attention, other) alpha_init of a point-wise norm for model width ``dim`` (paper Table 11)."""
    rows = [w for w in sorted(ALPHA_INIT_BY_WIDTH) if w <= dim]
    return ALPHA_INIT_BY_WIDTH[rows[-1] if rows else min(ALPHA_INIT_BY_WIDTH)]


def ffn_hidden_dim(dim: int, multiple_of: int) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4*dim (same parameters as a 4*dim MLP), rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# --------------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------------
def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (seq_len, head_dim) in the rotate-half layout, computed in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, head_dim) by position: the first and second halves of head_dim form the pairs."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Causal self-attention with grouped-query attention (``n_kv_heads`` key/value heads) and RoPE."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"need dim % n_heads == 0 and n_heads % n_kv_heads == 0; "
                f"got dim={dim}, n_heads={n_heads}, n_kv_heads={n_kv_heads}"
            )
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``."""

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int, hidden_dim: int, norm: NormFactory, norm_hints: dict[str, dict]
    ) -> None:
        super().__init__()
        self.attention_norm = norm(dim, site="attn", **norm_hints["attn"])
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.ffn_norm = norm(dim, site="ffn", **norm_hints["ffn"])
        self.feed_forward = FeedForward(dim, hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
class Llama(nn.Module):
    """LLaMA-2 decoder returning next-token logits (B, T, vocab_size).

    Args:
        dim, n_layers, n_heads: width, depth and query heads.
        n_kv_heads: key/value heads (grouped-query attention); None means ``n_heads``.
        vocab_size: tokenizer size (LLaMA-2: 32000); input and output embeddings are not tied.
        hidden_dim: SwiGLU width; None derives it from ``dim`` and ``multiple_of`` (``ffn_hidden_dim``).
        multiple_of: rounding of the derived SwiGLU width.
        rope_theta: RoPE base (LLaMA-2: 10000).
        eps: the RMSNorm epsilon hint (LLaMA-2: 1e-5); a norm without eps ignores it.
        embed_scale: ``auto`` (``sqrt_d`` with a point-wise norm, ``none`` otherwise), ``sqrt_d``
            (a learnable scalar after the embedding, initialised to sqrt(dim); paper App. A), ``unit``
            (the same scalar initialised to 1 / init_std: unit-std embeddings, for DyT below the paper's
            widths; not the paper's) or ``none``.
        init_std: std of the truncated-normal init of every linear and embedding weight (0.02, the
            value the official fms-fsdp code checks in ``validate_reset_parameters``).
        norm: the norm factory, a norm name or a ``configs/norm`` mapping.
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "attn",  # before each block's attention (attention_norm)
        "ffn",  # before each block's FFN (ffn_norm)
        "final",  # after the last block, before the head (norm)
    )

    def __init__(
        self,
        *,
        dim: int,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        vocab_size: int = 32000,
        hidden_dim: int | None = None,
        multiple_of: int = 256,
        rope_theta: float = 10000.0,
        eps: float = 1e-5,
        embed_scale: str = "auto",
        init_std: float = 0.02,
        norm=None,
    ) -> None:
        super().__init__()
        norm = build_norm_factory(norm)
        if embed_scale == "auto":
            embed_scale = "sqrt_d" if norm.pointwise else "none"
        self.embed_scale_kind, self.embed_scale_init = embed_scale, embed_scale_init(embed_scale, dim, init_std)
        self.dim, self.n_heads, self.vocab_size = dim, n_heads, vocab_size
        self.n_kv_heads = n_kv_heads or n_heads
        self.hidden_dim = hidden_dim or ffn_hidden_dim(dim, multiple_of)
        self.rope_theta, self.eps, self.init_std = rope_theta, eps, init_std

        # LLaMA-2's RMSNorm has eps 1e-5 and no bias; DyT keeps "no bias" (paper Sec. 4).
        attn_alpha, other_alpha = alpha_init_for_width(dim)
        hints = {
            site: {"eps": eps, "bias": False, "alpha_init": alpha}
            for site, alpha in (("attn", attn_alpha), ("ffn", other_alpha), ("final", other_alpha))
        }

        with deferred_init(self):
            self.tok_embeddings = nn.Embedding(vocab_size, dim)
            self.embed_scale = nn.Parameter(torch.empty(1)) if self.embed_scale_init is not None else None
            self.layers = nn.ModuleList(
                TransformerBlock(dim, n_heads, self.n_kv_heads, self.hidden_dim, norm, hints) for _ in range(n_layers)
            )
            self.norm = norm(dim, site="final", **hints["final"])
            self.output = nn.Linear(dim, vocab_size, bias=False)
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re-)initialise every parameter: truncated normal linears and embedding, norms reset
        themselves, ``embed_scale`` at sqrt(dim) (or 1 / init_std for ``unit``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=self.init_std, a=-3 * self.init_std, b=3 * self.init_std)
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # the norms
        if self.embed_scale is not None:
            self.embed_scale.fill_(self.embed_scale_init)

    def wrap_units(self) -> list[nn.Module]:
        """The decoder layers: FSDP2 shards and activation checkpointing wrap each of them."""
        return list(self.layers)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token at ``seq_len`` (torchtitan's llama3 count: every parameter but the
        token embedding's acts on every token)."""
        return transformer_flops_per_token(matmul_params(self), len(self.layers), self.dim, seq_len)

    def init_from_state_dict(self, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor | None]:
        """Weights of another model -> ours, for ``init_from`` (dyt/engine/weights.py): Hugging Face
        ``LlamaForCausalLM`` names are renamed (``from_hf_state_dict``); a source without ``embed_scale``
        (Hugging Face, or an RMSNorm run) leaves ours at its init, e.g. sqrt(dim) (paper App. A; ``None`` =
        keep the model's own value)."""
        if any(k.startswith(("model.layers.", "model.embed_tokens.", "lm_head.")) for k in state):
            state = from_hf_state_dict(state)
        if self.embed_scale is not None and "embed_scale" not in state:
            state = {**state, "embed_scale": None}
        return state

    def check_hf_config(self, config: dict) -> list[str]:
        """For ``init_from`` of a Hugging Face directory: how its ``config.json`` disagrees with this model
        (``models/llama_hf.py``)."""
        return check_hf_config(self, config)

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """A batch of 8 random tokens per sequence."""
        return (torch.randint(0, self.vocab_size, (batch, 8), device=self.output.weight.device),)

    def resolved_options(self) -> dict:
        """The norms as built, per site (the width-dependent ``alpha_init`` of paper Table 11 included),
        and the embedding scale ``embed_scale="auto"`` resolved to."""
        return {"norms": self.norm_options, "embed_scale": self.embed_scale_kind}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        cos, sin = rope_cos_sin(tokens.shape[1], self.dim // self.n_heads, self.rope_theta, x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.output(self.norm(x))


# --------------------------------------------------------------------------------------------------
# Presets. Paper sizes: fms-fsdp's llama2_{7b,13b,34b,70b} (paper App. A; fms-fsdp model configs); vocab 32000.
# --------------------------------------------------------------------------------------------------
def _llama(norm, kwargs, **shape) -> Llama:
    return Llama(norm=norm, **{**shape, **kwargs})


@register_model
def llama_tiny(norm=None, **kwargs) -> Llama:  # tests: GQA, 2 layers
    return _llama(norm, kwargs, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32)


@register_model
def llama_cpu(norm=None, **kwargs) -> Llama:  # CPU runs (experiment=cpu/llama_stdlib); width swept by model.dim
    return _llama(norm, kwargs, dim=128, n_layers=4, n_heads=4)


@register_model
def llama_20m(norm=None, **kwargs) -> Llama:
    return _llama(norm, kwargs, dim=256, n_layers=4, n_heads=4)


@register_model
def llama_60m(norm=None, **kwargs) -> Llama:
    return _llama(norm, kwargs, dim=512, n_layers=8, n_heads=8)


@register_model
def llama_150m(norm=None, **kwargs) -> Llama:
    return _llama(norm, kwargs, dim=768, n_layers=14, n_heads=12)


@register_model
def llama_1b(norm=None, **kwargs) -> Llama:  # TinyLlama-1.1B's shape
    return _llama(norm, kwargs, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632)


@register_model
def llama2_7b(norm=None, **kwargs) -> Llama:
    return _llama(norm, kwargs, dim=4096, n_layers=32, n_heads=32, hidden_dim=11008)


@register_model
def llama2_13b(norm=None, **kwargs) -> Llama:
    return _llama(norm, kwargs, dim=5120, n_layers=40, n_heads=40, hidden_dim=13824)


@register_model
def llama2_34b(norm=None, **kwargs) -> Llama:
    return _llama(norm, kwargs, dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, hidden_dim=22016)


@register_model
def llama2_70b(norm=None, **kwargs) -> Llama:
    return _llama(norm, kwargs, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, hidden_dim=28672)
