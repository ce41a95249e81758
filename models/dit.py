"""DiT: Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023), with any norm.

The DyT paper (Sec. 5, Table 3) trains DiT-B/4, L/4 and XL/2 on ImageNet latents with LayerNorm or
DyT. DiT's norms have no affine parameters: the adaptive LayerNorm ("adaLN") modulation, regressed
from the timestep and class embeddings, supplies shift and scale. So every norm site asks the factory
for ``affine=False`` (with DyT that leaves ``tanh(alpha * x)``) and LayerNorm's ``eps=1e-6``.

adaLN-Zero zero-initialises the modulation layers and the output layer so that every block starts as
the identity. The DyT paper removes that initialisation for DyT ([P2] App. A; the official
``dynamic-tanh.patch``), and Derf removes it for every point-wise function: ``zero_init_adaln="auto"``
keeps it for normalization layers and drops it for point-wise ones (``norm.pointwise``).

Parameter and module names follow facebookresearch/DiT, so its checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dyt.nn import build_norm_factory
from models import deferred_init, register_model
from models.flops import matmul_params, transformer_flops_per_token


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample shift and scale broadcast over the tokens of ``x`` (N, T, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# Embedding layers for timesteps, class labels and the fixed 2-D position grid
# --------------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t`` (N,) -> (N, dim), cos then sin."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    """Sinusoidal frequencies of the timestep followed by a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra "null" row used for classifier-free guidance.

    During training each label is replaced by the null class with probability ``dropout_prob`` (DiT
    uses 0.1); at sampling the null class gives the unconditional prediction.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid_size**2, dim): half the channels encode the row
    coordinate, half the column, each as ``[sin, cos]`` of frequencies ``1 / 10000**(k / (dim/4))``."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs hidden_size divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device="cpu") / (dim / 4))
    coords = torch.arange(grid_size, dtype=torch.float64, device="cpu")
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    # DiT builds the grid as (w, h) and embeds its first component (the column index) first.
    return torch.cat([embed(cols), embed(rows)], dim=1).float()


# --------------------------------------------------------------------------------------------------
# Transformer block and output layer
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout, so DiT weights load)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU, as in DiT."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Pre-norm block whose norms are modulated (shift, scale) and whose residual branches are gated by
    six vectors regressed from the conditioning ``c``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, norm) -> None:
        super().__init__()
        self.norm1 = norm(hidden_size, site="attn", affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = norm(hidden_size, site="ffn", affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Modulated final norm and the linear map from tokens to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, norm) -> None:
        super().__init__()
        self.norm_final = norm(hidden_size, site="final", affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# --------------------------------------------------------------------------------------------------
# DiT
# --------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Class-conditional diffusion transformer over a (C, H, W) latent or image.

    Args:
        input_size: height and width of the input (32 for 256 px images in SD-VAE latent space).
        patch_size: side of the square patches turned into tokens (the "/2", "/4" of DiT-XL/2, B/4).
        in_channels: input channels (4 for SD-VAE latents, 1 or 3 for pixels).
        hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        class_dropout_prob: probability of replacing a label by the null class in training (CFG; DiT 0.1).
        num_classes: number of classes; the null class is index ``num_classes``.
        learn_sigma: also predict the interpolation of the variance (output channels doubled).
        zero_init_adaln: adaLN-Zero initialisation. ``"auto"``: on for normalization layers, off for
            point-wise ones (DyT paper App. A); ``True``/``False`` force it.
        norm: a norm factory, name or ``configs/norm`` mapping (sites: ``NORM_SITES``).
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "attn",  # before each block's attention, then adaLN's shift and scale
        "ffn",  # before each block's MLP, then adaLN's shift and scale
        "final",  # in the final layer, before adaLN's shift and scale and the output linear
    )

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        zero_init_adaln: bool | str = "auto",
        norm=None,
    ) -> None:
        super().__init__()
        norm = build_norm_factory(norm)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if zero_init_adaln not in ("auto", True, False):
            raise ValueError(f"zero_init_adaln must be 'auto', true or false, got {zero_init_adaln!r}")
        self.zero_init_adaln = (not norm.pointwise) if zero_init_adaln == "auto" else zero_init_adaln
        self.in_channels, self.patch_size, self.num_classes = in_channels, patch_size, num_classes
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.grid_size = input_size // patch_size

        with deferred_init(self):
            self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
            self.t_embedder = TimestepEmbedder(hidden_size)
            self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
            # Fixed, not learned (DiT); a persistent buffer so DiT checkpoints with `pos_embed` load.
            self.register_buffer("pos_embed", torch.empty(1, self.grid_size**2, hidden_size))
            self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, norm) for _ in range(depth))
            self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, norm)
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DiT's initialisation; the adaLN-Zero part only when ``self.zero_init_adaln``. The fixed
        position grid is recomputed too: it is a buffer, which ``to_empty`` leaves uninitialised."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif module is not self and module is not self.x_embedder and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # norms (DyT's alpha); the embedding table is re-set below
        self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid_size)[None])
        # Patch embedding initialised like a linear layer on the flattened patch.
        weight = self.x_embedder.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.zero_init_adaln:
            zeroed = [block.adaLN_modulation[-1] for block in self.blocks]
            zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
            for layer in zeroed:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks: FSDP2 shards and activation checkpointing wrap each of them."""
        return list(self.blocks)

    def flops_per_image(self) -> int:
        """Training FLOPs per image (torchtitan's count over the patch tokens; the conditioning path,
        timestep MLP and every adaLN regression, acts once per image)."""
        per_sample = (self.t_embedder, self.y_embedder, self.final_layer.adaLN_modulation)
        per_sample += tuple(b.adaLN_modulation for b in self.blocks)
        tokens, dim = self.grid_size**2, self.x_embedder.out_channels
        per_token = matmul_params(self, per_sample=per_sample)
        once = matmul_params(self) - per_token
        return tokens * transformer_flops_per_token(per_token, len(self.blocks), dim, tokens) + 6 * once

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy inputs, timesteps in [0, 1000) and labels, as in training."""
        device, size = self.pos_embed.device, self.grid_size * self.patch_size
        x = torch.randn(batch, self.in_channels, size, size, device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        return x, t, torch.randint(0, self.num_classes, (batch,), device=device)

    def resolved_options(self) -> dict:
        """The norms as built, per site, and whether adaLN-Zero was applied (``zero_init_adaln="auto"``)."""
        return {"norms": self.norm_options, "zero_init_adaln": self.zero_init_adaln}

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) tokens -> (N, C, H, W) image."""
        p, g, c = self.patch_size, self.grid_size, self.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Noisy input ``x`` (N, C, H, W), timesteps ``t`` (N,), labels ``y`` (N,) -> (N, out_channels, H, W):
        the predicted noise, followed (``learn_sigma``) by the variance interpolation values."""
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


# --------------------------------------------------------------------------------------------------
# Presets: DiT-{S,B,L,XL}/{2,4,8} (DiT Table 1) and a tiny pixel-space model for digits and tests
# --------------------------------------------------------------------------------------------------

_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}


def _dit(size: str, patch_size: int, norm, **kwargs) -> DiT:
    depth, hidden_size, num_heads = _SIZES[size]
    return DiT(
        **{
            "depth": depth,
            "hidden_size": hidden_size,
            "num_heads": num_heads,
            "patch_size": patch_size,
            "norm": norm,
            **kwargs,
        }
    )


@register_model
def dit_s2(norm=None, **kwargs):
    return _dit("s", 2, norm, **kwargs)


@register_model
def dit_s4(norm=None, **kwargs):
    return _dit("s", 4, norm, **kwargs)


@register_model
def dit_s8(norm=None, **kwargs):
    return _dit("s", 8, norm, **kwargs)


@register_model
def dit_b2(norm=None, **kwargs):
    return _dit("b", 2, norm, **kwargs)


@register_model
def dit_b4(norm=None, **kwargs):
    return _dit("b", 4, norm, **kwargs)


@register_model
def dit_b8(norm=None, **kwargs):
    return _dit("b", 8, norm, **kwargs)


@register_model
def dit_l2(norm=None, **kwargs):
    return _dit("l", 2, norm, **kwargs)


@register_model
def dit_l4(norm=None, **kwargs):
    return _dit("l", 4, norm, **kwargs)


@register_model
def dit_l8(norm=None, **kwargs):
    return _dit("l", 8, norm, **kwargs)


@register_model
def dit_xl2(norm=None, **kwargs):
    return _dit("xl", 2, norm, **kwargs)


@register_model
def dit_xl4(norm=None, **kwargs):
    return _dit("xl", 4, norm, **kwargs)


@register_model
def dit_xl8(norm=None, **kwargs):
    return _dit("xl", 8, norm, **kwargs)


@register_model
def dit_tiny(norm=None, **kwargs):
    """8x8 one-channel pixels (scikit-learn digits), 16 tokens of 2x2 patches, 4 blocks of width 64."""
    return DiT(
        **{
            "input_size": 8,
            "patch_size": 2,
            "in_channels": 1,
            "hidden_size": 64,
            "depth": 4,
            "num_heads": 4,
            "num_classes": 10,
            "norm": norm,
            **kwargs,
        }
    )
