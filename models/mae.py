"""Masked Autoencoder (He et al. 2022) with every norm built by the norm factory (paper Table 2).

The encoder is a ViT (models/vit.py's ``Block``) that sees only the patches kept after random masking;
a light decoder fills the masked positions with a shared mask token and predicts their pixels. Layout
and parameter names follow MAE's ``models_mae.py``, so an official MAE checkpoint loads unchanged, and
``to_hf`` / ``from_hf`` convert to Hugging Face's ``ViTMAEForPreTraining``: with ``norm=layernorm`` and the
same noise (hence the same mask), mask and reconstruction equal theirs, and so does the loss that
``dyt.tasks.mae.mae_loss`` computes from them (tests/test_mae.py).

Norm sites: ``MaskedAutoencoder.NORM_SITES``. The normalization-free baselines of paper Table 9
(``norm=identity`` with ``residual_init`` or ``sigma_reparam``, as in models/vit.py) apply to the encoder
and the decoder alike: the paper removes every norm of the model, and a decoder without norms needs the
same remedy as the encoder.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from torch import nn

from dyt.nn import NormFactory, build_norm_factory
from dyt.nn.normfree import check_normfree_options, fixup_init_, reset_sigma_reparam_, sigma_reparam_
from models import deferred_init, register_model
from models.vit import HF_VIT_NAMES, LN_EPS, VIT_SIZES, Block, from_hf, to_hf


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (1, 1 + grid**2, dim) with a zero row for the class token.

    Half the channels encode the column, half the row, each as [sin | cos] of the position times
    frequencies 1 / 10000**(k / (dim/4)) (MAE util/pos_embed.py; column first, as MAE's checkpoints have it).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for coord in (cols.flatten(), rows.flatten()):
        angle = coord[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.cat(parts, dim=1)])
    return table.float().unsqueeze(0)


def with_site_prefix(norm: NormFactory, prefix: str):
    """A norm factory that builds ``norm``'s norms under ``<prefix><site>`` (the decoder's own sites)."""

    def build(dim: int, site: str, **kwargs):
        return norm(dim, site=prefix + site, **kwargs)

    return build


class MaskedAutoencoder(nn.Module):
    """MAE pretraining model: masked ViT encoder, light Transformer decoder, pixel loss on masked patches.

    Args:
        norm: the norm factory (or a norm name / ``configs/norm`` mapping).
        mask_ratio: fraction of patches removed (MAE: 0.75).
        norm_pix_loss: regress each patch's pixels normalised by the patch's own mean and variance
            (MAE's default for its best representations; read by ``dyt.tasks.mae.mae_loss``).
        decoder_*: the decoder's width, depth and heads (MAE: 512, 8, 16).
        residual_init: ``skipinit`` or ``fixup`` (paper Table 9; use with ``norm=identity``), in the
            encoder's and the decoder's blocks alike, as in ``VisionTransformer``. Fixup treats the two
            stacks as two residual networks, each with its own branch count ``L`` (the decoder starts from
            ``decoder_embed``'s projection of the latent, not from the encoder's residual stream); it zeroes
            ``decoder_pred``, the output layer, as Fixup zeroes a classifier, and keeps ``decoder_embed``
            standard so the latent reaches the decoder. ``None`` (default): MAE's init.
        sigma_reparam: sigma-Reparam (paper Table 9) on every linear layer of encoder and decoder
            (``decoder_embed`` and ``decoder_pred`` included; not the patch-embedding conv, as in the ViT).

    The encoder's parameter names equal ``VisionTransformer``'s built with the same options (SkipInit's
    ``blocks.i.ls1.scale``, sigma-Reparam's ``blocks.i.attn.qkv.gamma``), so fine-tuning with the same
    ``residual_init`` / ``sigma_reparam`` loads every encoder weight (``init_from``).
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "attn",  # before each encoder block's attention (blocks.i.norm1)
        "ffn",  # before each encoder block's MLP (blocks.i.norm2)
        "final",  # the encoder's last norm (norm)
        "decoder_attn",  # the same three in the decoder (decoder_blocks.i.norm1, ...)
        "decoder_ffn",
        "decoder_final",  # decoder_norm
    )

    def __init__(
        self,
        norm: NormFactory | str | None = None,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        residual_init: str | None = None,
        sigma_reparam: bool = False,
    ) -> None:
        super().__init__()
        check_normfree_options(residual_init, sigma_reparam)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1) (MAE: 0.75), got {mask_ratio}")
        norm = build_norm_factory(norm)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.patch_size, self.in_channels = patch_size, in_chans
        self.residual_init, self.sigma_reparam = residual_init, sigma_reparam
        with deferred_init(self):
            # ---- encoder: a ViT over the kept patches
            self.patch_embed = PatchEmbed(
                img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
            )
            num_patches = self.patch_embed.num_patches
            self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
            # Fixed, not learned (MAE): a buffer, saved in checkpoints under MAE's name.
            self.register_buffer("pos_embed", torch.empty(1, num_patches + 1, embed_dim))
            self.blocks = nn.ModuleList(
                [Block(embed_dim, num_heads, mlp_ratio, True, 0.0, None, norm, residual_init) for _ in range(depth)]
            )
            self.norm = norm(embed_dim, site="final", eps=LN_EPS)

            # ---- decoder: mask tokens at the removed positions, predicts every patch's pixels
            decoder_norm = with_site_prefix(norm, "decoder_")
            self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
            self.mask_token = nn.Parameter(torch.empty(1, 1, decoder_embed_dim))
            self.register_buffer("decoder_pos_embed", torch.empty(1, num_patches + 1, decoder_embed_dim))
            self.decoder_blocks = nn.ModuleList(
                [
                    Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, True, 0.0, None, decoder_norm, residual_init)
                    for _ in range(decoder_depth)
                ]
            )
            self.decoder_norm = decoder_norm(decoder_embed_dim, site="final", eps=LN_EPS)
            self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
            if sigma_reparam:
                sigma_reparam_(self)
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """MAE's init (models_mae.py ``initialize_weights``): sin-cos position tables, the patch
        projection like a linear layer (Xavier uniform), class and mask tokens normal(0.02), Xavier
        uniform linears with zero bias; norms reset themselves. Then Fixup's rescaling (per stack; see the
        class docstring), or sigma-Reparam's gamma = 1 and power iteration, on those weights."""
        grid = self.patch_embed.grid_size[0]
        self.pos_embed.copy_(sincos_pos_embed(self.pos_embed.shape[-1], grid))
        self.decoder_pos_embed.copy_(sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid))
        self.patch_embed.proj.reset_parameters()
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(self.patch_embed.proj.weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif module is not self and module is not self.patch_embed.proj and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if self.residual_init == "fixup":
            for blocks, head in ((self.blocks, None), (self.decoder_blocks, self.decoder_pred)):
                fixup_init_([branch for block in blocks for branch in block.residual_branches()], head)
        reset_sigma_reparam_(self)

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks of encoder and decoder (FSDP2 units, activation checkpointing)."""
        return [*self.blocks, *self.decoder_blocks]

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """A batch of random images at the model's input size."""
        return (torch.randn(batch, self.in_channels, *self.patch_embed.img_size, device=self.cls_token.device),)

    def resolved_options(self) -> dict:
        """The norms as built, per site, and the normalization-free options (see the model protocol in
        ``models``)."""
        return {"norms": self.norm_options, "residual_init": self.residual_init, "sigma_reparam": self.sigma_reparam}

    # ---- patches and masking ----------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, patches, p*p*C), pixels ordered (row, column, channel) as MAE."""
        n, c, h, w = imgs.shape
        p = self.patch_size
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`patchify` for square images."""
        n, patches, _ = x.shape
        p, c, g = self.patch_size, self.in_channels, int(patches**0.5)
        x = x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, g * p, g * p)

    def random_masking(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the ``(1 - mask_ratio)`` fraction of tokens with the smallest noise (uniform by default).

        Returns the kept tokens, the mask (N, L) with 1 on removed patches, and the permutation that
        restores the original order. Passing ``noise`` makes the mask reproducible (tests)."""
        n, length, dim = x.shape
        keep = int(length * (1 - self.mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = x.gather(1, shuffle[:, :keep, None].expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        return kept, mask.gather(1, restore), restore

    # ---- forward ----------------------------------------------------------------------------------
    def forward_encoder(
        self, imgs: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x, mask, restore = self.random_masking(x, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, restore

    def forward_decoder(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n, kept, dim = x[:, 1:].shape
        masked = self.mask_token.expand(n, restore.shape[1] - kept, -1)
        patches = torch.cat([x[:, 1:], masked], dim=1).gather(1, restore[..., None].expand(-1, -1, dim))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (predicted patches (N, L, p*p*C), mask (N, L) with 1 = removed); the pixel loss on
        them is the task's (``dyt.tasks.mae.mae_loss``)."""
        latent, mask, restore = self.forward_encoder(imgs, noise)
        return self.forward_decoder(latent, restore), mask


# ---- Hugging Face ViTMAEForPreTraining layout ---------------------------------------------------------

_HF_NAMES = {
    **{ours: f"vit.{hf}" for ours, hf in HF_VIT_NAMES.items()},
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    **{f"decoder_{m}.{p}": f"decoder.decoder_{m}.{p}" for m in ("embed", "norm", "pred") for p in ("weight", "bias")},
}
_HF_BLOCKS = {"blocks.": "vit.layers.", "decoder_blocks.": "decoder.decoder_layers."}


def mae_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (= MAE's) state dict -> Hugging Face ``ViTMAEForPreTraining`` names (``norm=layernorm`` only)."""
    return to_hf(state, _HF_NAMES, _HF_BLOCKS)


def mae_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``ViTMAEForPreTraining`` state dict -> ours."""
    return from_hf(state, _HF_NAMES, _HF_BLOCKS)


# ---- size presets (MAE models_mae.py: ViT-B/16 and ViT-L/16 with a 512-wide, 8-deep decoder) ----------


@register_model
def mae_vit_b(norm=None, **kwargs) -> MaskedAutoencoder:
    return MaskedAutoencoder(norm, **{**VIT_SIZES["b"], **kwargs})


@register_model
def mae_vit_l(norm=None, **kwargs) -> MaskedAutoencoder:
    return MaskedAutoencoder(norm, **{**VIT_SIZES["l"], **kwargs})


# CPU demo on scikit-learn's 8x8 grey digits: vit_digits' encoder (16 patches of 2x2), a 2-block decoder.
@register_model
def mae_vit_digits(norm=None, **kwargs) -> MaskedAutoencoder:
    decoder = {"decoder_embed_dim": 32, "decoder_depth": 2, "decoder_num_heads": 4}
    return MaskedAutoencoder(norm, **{**VIT_SIZES["digits"], **decoder, **kwargs})
