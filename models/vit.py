"""Vision Transformer (Dosovitskiy et al. 2021) with every norm built by the norm factory.

The layout and parameter names follow timm's ``VisionTransformer``, so a timm state dict loads unchanged
and, with ``norm=layernorm``, the logits equal timm's (tests/test_vision_models.py). Attention, MLP,
patch embedding, layer scale and drop path are timm's layers; only the block and the model are written
here, because timm's block takes one norm class for both of its norms and we name each site
(``VisionTransformer.NORM_SITES``). The paper's ImageNet ViTs use ``global_pool='avg'`` (the official
code's ``main.py``, paper Sec. 4), so the final norm sits after pooling.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Attention  # also there in timm 1.0.15, unlike timm.layers
from torch import nn

from dyt.nn import NormFactory, build_norm_factory
from dyt.nn.normfree import branch_scale, check_normfree_options, fixup_init_, reset_sigma_reparam_, sigma_reparam_
from models import deferred_init, register_model
from models.flops import matmul_params, transformer_flops_per_token

GLOBAL_POOLS = ("avg", "token")
LN_EPS = 1e-6  # timm's ViT LayerNorm eps; a hint, so DyT ignores it


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm_attn(x))``, then ``x + mlp(norm_ffn(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        init_values: float | None,
        norm: NormFactory,
        residual_init: str | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm(dim, site="attn", eps=LN_EPS)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = self._branch_scale(dim, init_values, residual_init)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm(dim, site="ffn", eps=LN_EPS)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))
        self.ls2 = self._branch_scale(dim, init_values, residual_init)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @staticmethod
    def _branch_scale(dim: int, init_values: float | None, residual_init: str | None) -> nn.Module:
        """What multiplies a residual branch: layer scale, a Fixup/SkipInit scalar, or nothing."""
        if residual_init is not None:
            return branch_scale(residual_init)
        return LayerScale(dim, init_values=init_values) if init_values else nn.Identity()

    def residual_branches(self) -> list[list[nn.Linear]]:
        """The weight layers of each residual branch, in order (what Fixup rescales): attention, MLP."""
        return [[self.attn.qkv, self.attn.proj], [self.mlp.fc1, self.mlp.fc2]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT classifier.

    Args:
        norm: the norm factory (or a norm name / ``configs/norm`` mapping).
        global_pool: ``avg`` (mean of the patch tokens, then ``fc_norm``; the paper's ImageNet runs) or
            ``token`` (the class token after the final ``norm``).
        class_token: prepend a learnable class token (kept with ``avg`` pooling, as timm and the paper do).
        init_values: layer-scale init; ``None`` (default) turns layer scale off.
        drop_path_rate: stochastic depth of the last block; it grows linearly from 0 over the blocks.
        dynamic_img_size: accept images of any size that the patch divides, resampling the position
            embeddings to their grid (DINO's multi-crop: 224 px global and 96 px local crops).
        residual_init: the normalization-free baselines of paper Table 9 (use them with ``norm=identity``):
            ``skipinit`` (each residual branch times a learnable scalar initialised to 0: every block
            starts as the identity) or ``fixup`` (Fixup's init: last layer of each branch and the head
            zeroed, qkv and fc1 scaled by ``(2 * depth) ** -1/2``, a scalar multiplier initialised to 1
            per branch); ``None`` (default): the standard init. See ``dyt/nn/normfree.py``.
        sigma_reparam: sigma-Reparam (Zhai et al. 2023; paper Table 9): every linear layer (qkv, proj,
            fc1, fc2, head; not the patch-embedding conv) uses ``gamma / sigma(W) * W``.
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "attn",  # before each block's attention (timm blocks.i.norm1)
        "ffn",  # before each block's MLP (timm blocks.i.norm2)
        "final",  # the last norm: fc_norm after average pooling, norm before token pooling
    )

    def __init__(
        self,
        norm: NormFactory | str | None = None,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        class_token: bool = True,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
        residual_init: str | None = None,
        sigma_reparam: bool = False,
    ) -> None:
        super().__init__()
        check_normfree_options(residual_init, sigma_reparam, init_values)
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"unknown global_pool {global_pool!r}; valid choices are: {', '.join(GLOBAL_POOLS)}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' pools the class token; set class_token=True or use 'avg'")
        norm = build_norm_factory(norm)
        self.global_pool, self.num_classes, self.embed_dim = global_pool, num_classes, embed_dim
        self.in_channels, self.num_prefix_tokens = in_chans, int(class_token)
        self.residual_init, self.sigma_reparam = residual_init, sigma_reparam

        self.dynamic_img_size = dynamic_img_size
        with deferred_init(self):
            self.patch_embed = PatchEmbed(
                img_size=img_size,
                patch_size=patch_size,
                in_chans=in_chans,
                embed_dim=embed_dim,
                strict_img_size=not dynamic_img_size,
            )
            self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim)) if class_token else None
            num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
            self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, embed_dim))
            rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
            self.blocks = nn.Sequential(
                *[
                    Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rate, init_values, norm, residual_init)
                    for rate in rates
                ]
            )
            pool_first = global_pool == "avg"
            self.norm = nn.Identity() if pool_first else norm(embed_dim, site="final", eps=LN_EPS)
            self.fc_norm = norm(embed_dim, site="final", eps=LN_EPS) if pool_first else nn.Identity()
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
            if sigma_reparam:
                sigma_reparam_(self)
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm's ViT init: truncated normal (std 0.02) linears with zero bias, pos_embed std 0.02,
        class token std 1e-6; every other layer (patch conv, norms, layer scale) resets itself. Then
        Fixup's rescaling, or sigma-Reparam's gamma = 1 and power iteration, on those weights."""
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if self.residual_init == "fixup":
            branches = [branch for block in self.blocks for branch in block.residual_branches()]
            fixup_init_(branches, self.head if isinstance(self.head, nn.Linear) else None)
        reset_sigma_reparam_(self)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimizer should not decay (timm's convention)."""
        return {"pos_embed", "cls_token"}

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks: FSDP2 shards and activation checkpointing wrap each of them."""
        return list(self.blocks)

    def flops_per_image(self) -> int:
        """Training FLOPs per image (torchtitan's count over the patch and class tokens; the head acts
        once per image)."""
        tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        per_token = matmul_params(self, per_sample=(self.head,))
        once = matmul_params(self) - per_token
        return tokens * transformer_flops_per_token(per_token, len(self.blocks), self.embed_dim, tokens) + 6 * once

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise lr decay (MAE util/lr_decay.py): 0 for the
        embeddings, ``i + 1`` for block ``i``, ``depth + 1`` for the final norm and the head."""
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def init_from_state_dict(self, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Weights of another ViT -> ours, for ``init_from`` (dyt/engine/weights.py). timm's names are ours; only
        the final norm (one site, ``final``) is ``norm`` under class-token pooling and ``fc_norm`` under
        average pooling, so a source pooled the other way initialises our final norm from its own.
        (MAE's fine-tuning, ``main_finetune.py``, instead starts ``fc_norm`` fresh: ``init_from.ignore:
        [fc_norm.*, norm.*]`` does that.)

        A pretraining run gives its encoder: of an MAE state (models/mae.py, encoder names equal ours) the
        decoder and mask token are dropped; of a DINO state (models/dino.py) the teacher's backbone is
        taken, as DINO's evaluations do (eval_linear.py ``--checkpoint_key teacher``)."""
        teacher = "teacher.backbone."
        if any(k.startswith(teacher) for k in state):
            state = {k[len(teacher) :]: v for k, v in state.items() if k.startswith(teacher)}
        state = {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))}
        ours, theirs = ("fc_norm", "norm") if self.global_pool == "avg" else ("norm", "fc_norm")
        if any(k.startswith(ours + ".") for k in state):
            return state
        return {(ours + k[len(theirs) :] if k.startswith(theirs + ".") else k): v for k, v in state.items()}

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """A batch of random images at the model's input size."""
        device = self.pos_embed.device
        return (torch.randn(batch, self.in_channels, *self.patch_embed.img_size, device=device),)

    def resolved_options(self) -> dict:
        """The norms as built, per site, and the normalization-free options (see the model protocol in
        ``models``)."""
        return {"norms": self.norm_options, "residual_init": self.residual_init, "sigma_reparam": self.sigma_reparam}

    def resample_pos_embed(self, grid: list[int]) -> torch.Tensor:
        """The position embeddings for a patch grid other than the built one: timm's bicubic resize to
        exactly that grid (``models.dino`` swaps in DINO's own interpolation)."""
        built = list(self.patch_embed.grid_size)
        return resample_abs_pos_embed(self.pos_embed, grid, built, self.num_prefix_tokens, antialias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> tokens (N, prefix + patches, D) after the blocks (and ``norm`` when
        pooling the class token)."""
        grid = [x.shape[-2] // self.patch_embed.patch_size[0], x.shape[-1] // self.patch_embed.patch_size[1]]
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos_embed = self.pos_embed
        # A fixed-size ViT has no shape-dependent branch (torch.fx can trace it: dyt.fold).
        if self.dynamic_img_size and tuple(grid) != tuple(self.patch_embed.grid_size):
            pos_embed = self.resample_pos_embed(grid)
        x = self.blocks(x + pos_embed)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> pooled features (``pre_logits=True``) or logits."""
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---- Hugging Face layout ------------------------------------------------------------------------
# Published DINO checkpoints are Hugging Face ``ViTModel``s and MAE's are also ``ViTMAEForPreTraining``s;
# these tables convert our (timm) names to theirs and back. timm fuses q, k, v into one ``qkv`` linear.

HF_VIT_NAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_HF_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")


def to_hf(state: dict[str, torch.Tensor], names: dict[str, str], blocks: dict[str, str]) -> dict[str, torch.Tensor]:
    """Our state dict in Hugging Face names. ``names`` maps single keys, ``blocks`` maps a block-list
    prefix (``blocks.``) to Hugging Face's (``layers.``). Every key must be mapped: a norm with extra
    parameters (DyT's ``alpha``) has no Hugging Face counterpart and raises."""
    out = {}
    for key, value in state.items():
        prefix = next((p for p in blocks if key.startswith(p)), None)
        if key in names:
            out[names[key]] = value
        elif prefix is not None:
            index, rest = key[len(prefix) :].split(".", 1)
            module, param = rest.rsplit(".", 1)
            hf = f"{blocks[prefix]}{index}."
            if module == "attn.qkv":
                for hf_module, part in zip(_HF_QKV, value.chunk(3), strict=True):
                    out[f"{hf}{hf_module}.{param}"] = part
            elif module in _HF_BLOCK_NAMES:
                out[f"{hf}{_HF_BLOCK_NAMES[module]}.{param}"] = value
            else:
                raise KeyError(f"{key!r} has no Hugging Face counterpart (only norm=layernorm models convert)")
        else:
            raise KeyError(f"{key!r} has no Hugging Face counterpart (only norm=layernorm models convert)")
    return out


def from_hf(state: dict[str, torch.Tensor], names: dict[str, str], blocks: dict[str, str]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_hf` (same ``names`` and ``blocks``, ours -> theirs)."""
    inverse_names = {hf: ours for ours, hf in names.items()}
    inverse_blocks = {hf: ours for ours, hf in blocks.items()}
    inverse_modules = {hf: ours for ours, hf in _HF_BLOCK_NAMES.items()}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in inverse_blocks if key.startswith(p)), None)
        if key in inverse_names:
            out[inverse_names[key]] = value
        elif prefix is not None:
            index, rest = key[len(prefix) :].split(".", 1)
            module, param = rest.rsplit(".", 1)
            ours = f"{inverse_blocks[prefix]}{index}."
            if module == _HF_QKV[0]:
                parts = [state[f"{prefix}{index}.{m}.{param}"] for m in _HF_QKV]
                out[f"{ours}attn.qkv.{param}"] = torch.cat(parts)
            elif module in inverse_modules:
                out[f"{ours}{inverse_modules[module]}.{param}"] = value
            elif module not in _HF_QKV:
                raise KeyError(f"Hugging Face key {key!r} has no counterpart in our ViT")
        else:
            raise KeyError(f"Hugging Face key {key!r} has no counterpart in our ViT")
    return out


# ---- size presets (ViT paper Table 1; DeiT for Ti/S; patch 8 as in DINO B/8) ------------------------

# The one table of ViT sizes, shared by the MAE and DINO presets. "digits": the CPU size for
# scikit-learn's 8x8 grey digits, 16 patches of 2x2 pixels.
VIT_SIZES: dict[str, dict[str, int]] = {
    "ti": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "s": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "b": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "l": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "digits": {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 64, "depth": 4, "num_heads": 4},
}


@register_model
def vit_ti(norm=None, **kwargs) -> VisionTransformer:
    return VisionTransformer(norm, **{**VIT_SIZES["ti"], **kwargs})


@register_model
def vit_s(norm=None, **kwargs) -> VisionTransformer:
    return VisionTransformer(norm, **{**VIT_SIZES["s"], **kwargs})


@register_model
def vit_b(norm=None, **kwargs) -> VisionTransformer:
    return VisionTransformer(norm, **{**VIT_SIZES["b"], **kwargs})


@register_model
def vit_l(norm=None, **kwargs) -> VisionTransformer:
    return VisionTransformer(norm, **{**VIT_SIZES["l"], **kwargs})


@register_model
def vit_b8(norm=None, **kwargs) -> VisionTransformer:
    return VisionTransformer(norm, **{**VIT_SIZES["b"], "patch_size": 8, **kwargs})


# CPU quickstart on scikit-learn's 8x8 grey digits.
@register_model
def vit_digits(norm=None, **kwargs) -> VisionTransformer:
    return VisionTransformer(norm, **{**VIT_SIZES["digits"], "num_classes": 10, **kwargs})


# Unit tests only: two narrow blocks on 32x32 images.
@register_model
def vit_test(norm=None, **kwargs) -> VisionTransformer:
    return VisionTransformer(
        norm,
        **{"img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 32, "depth": 2, "num_heads": 2, **kwargs},
    )
