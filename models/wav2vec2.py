"""wav2vec 2.0 (Baevski et al. 2020) for self-supervised pretraining, with every norm built by the factory.

Raw 16 kHz audio goes through a 7-layer convolutional feature encoder (one frame per 20 ms), a norm and a
projection; spans of frames are masked and a Transformer with a convolutional relative position embedding
contextualises them. The targets are the unmasked features quantized by a Gumbel product quantizer; the
loss contrasts each masked frame's output with its target and sampled distractors: the model returns
the contrastive logits and the diversity and feature-penalty terms, and the task turns them into the loss
(``contrastive_loss`` and ``pretraining_loss`` in ``dyt.tasks.wav2vec2``).

Norm sites: ``Wav2Vec2.NORM_SITES``. For the paper's Table 5 runs, the authors' fairseq patch swaps the
Transformer's norms and the norm after the feature encoder, and keeps the conv encoder's norms (paper
App. A, "first GroupNorm kept").

``keep_norms`` lists the sites built with the original wav2vec 2.0 norm whatever ``norm`` is. It defaults
to ``("conv",)`` as in the DyT patch; Derf (Chen et al. 2025) also keeps ``post_extract``; an empty tuple
swaps the conv norms too.

The feature encoder, the quantizer, span masking and negatives are in ``models.wav2vec2_layers``.
Parameter names follow fairseq's ``wav2vec2.py`` where it is clear (``post_extract_proj``, ``mask_emb``,
``self_attn_layer_norm``, ``fc1``, ``final_proj``); ``models.wav2vec2_hf`` renames to
and from Hugging Face ``Wav2Vec2ForPreTraining``, whose outputs ours equal with ``norm=layernorm``
(tests/test_wav2vec2_parity.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from dyt.nn import NormFactory, build_norm_factory
from models import deferred_init, register_model
from models.wav2vec2_hf import from_hf_state_dict
from models.wav2vec2_layers import LN_EPS, FeatureEncoder, GumbelQuantizer, sample_mask, sample_negatives, scale_grad

EXTRACTOR_MODES = ("default", "layer_norm")
KEEPABLE_SITES = ("conv", "post_extract")


# --------------------------------------------------------------------------------------------------
# Transformer encoder
# --------------------------------------------------------------------------------------------------
class PositionalConv(nn.Module):
    """Convolutional relative position embedding: grouped Conv1d over time with weight norm over the
    kernel axis, the last output frame dropped for an even kernel (fairseq ``SamePad``), then GELU."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 - kernel % 2

    def reset_parameters(self, dropout: float) -> None:
        """fairseq's init: weight ~ N(0, 4 (1 - dropout) / (kernel * dim)), zero bias; the weight-norm
        magnitude starts at the norm of that weight, so the effective weight is the drawn one."""
        conv = self.conv
        kernel, dim = conv.kernel_size[0], conv.in_channels
        weight = conv.parametrizations.weight
        with torch.no_grad():
            v = weight.original1
            nn.init.normal_(v, std=math.sqrt(4 * (1.0 - dropout) / (kernel * dim)))
            g = torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True)
            if isinstance(g, DTensor):  # FSDP2 shards: reduce the norm, then take this rank's part
                g = distribute_tensor(g.full_tensor(), weight.original0.device_mesh, weight.original0.placements)
            weight.original0.copy_(g)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2))
        if self.trim:
            x = x[:, :, :-1]
        return F.gelu(x).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections (fairseq ``MultiheadAttention``)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(x.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    """Transformer block, post-norm (Base) or pre-norm (``layer_norm_first``, Large)."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        layer_norm_first: bool,
        norm: NormFactory,
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.self_attn = SelfAttention(dim, num_heads, attention_dropout)
        self.self_attn_layer_norm = norm(dim, site="attn", eps=LN_EPS)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = norm(dim, site="ffn", eps=LN_EPS)
        self.dropout, self.activation_dropout = nn.Dropout(dropout), nn.Dropout(activation_dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x)))
            return x + self.ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x)))
        return self.final_layer_norm(x + self.ffn(x))


class TransformerEncoder(nn.Module):
    """Position embedding, the blocks with layer drop, and the encoder norm (before the blocks in
    post-norm, after them in pre-norm)."""

    def __init__(self, dim, depth, layer_kwargs, pos_kernel, pos_groups, layerdrop, norm: NormFactory) -> None:
        super().__init__()
        self.layer_norm_first, self.layerdrop = layer_kwargs["layer_norm_first"], layerdrop
        self.pos_conv = PositionalConv(dim, pos_kernel, pos_groups)
        self.layers = nn.ModuleList([EncoderLayer(dim, norm=norm, **layer_kwargs) for _ in range(depth)])
        self.norm = norm(dim, site="final" if self.layer_norm_first else "embed", eps=LN_EPS)
        self.dropout = nn.Dropout(layer_kwargs["dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                # A dropped layer (LayerDrop, Fan et al. 2020) still joins the graph with zero gradients,
                # so DDP without find_unused_parameters sees every parameter used (fairseq's legacy DDP
                # likewise reduces zeros for them).
                x = x + sum(p.sum() for p in layer.parameters()) * 0.0
            else:
                x = layer(x)
        return self.norm(x) if self.layer_norm_first else x


# --------------------------------------------------------------------------------------------------
# wav2vec 2.0
# --------------------------------------------------------------------------------------------------
@dataclass
class Wav2Vec2Output:
    """What one pretraining forward returns.

    logits: (M, 1 + num_negatives) fp32, cosine similarities / logit_temp of each masked frame's output with
        its target (column 0) and its distractors; -inf where a distractor equals the target.
    prob_perplexity, code_perplexity: quantizer perplexities (soft and hard), summed over groups.
    diversity: (groups * num_vars - prob_perplexity) / (groups * num_vars), per frame.
    features_pen: mean squared feature-encoder output (fairseq's feature penalty), per frame.
    projected_states, projected_quantized_states: (B, T, final_dim) ``final_proj`` of the encoder output
        and ``project_q`` of the quantized targets, for every frame.
    mask: (B, T) the masked frames; num_masked = M.
    """

    logits: torch.Tensor
    prob_perplexity: torch.Tensor
    code_perplexity: torch.Tensor
    diversity: torch.Tensor
    features_pen: torch.Tensor
    projected_states: torch.Tensor
    projected_quantized_states: torch.Tensor
    mask: torch.Tensor

    @property
    def num_masked(self) -> int:
        return self.logits.shape[0]


class Wav2Vec2(nn.Module):
    """wav2vec 2.0 for pretraining.

    Args:
        norm: the norm factory (or a norm name / ``configs/norm`` mapping).
        conv_channels: width of every conv layer of the feature encoder (512 in both papers' models).
        extractor_mode: ``default`` (GroupNorm in the first conv layer; Base, and the paper's Large) or
            ``layer_norm`` (a channel LayerNorm in every conv layer; the Large preset, fairseq's LibriVox).
        layer_norm_first: pre-norm blocks with the encoder norm at the end (Large) instead of post-norm.
        keep_norms: sites built with the original norm whatever ``norm`` is (see the module docstring).
        final_dim: width of the contrastive space (and of the codevectors).
        feature_grad_mult: gradient scale into the feature encoder (fairseq; Base 0.1).
        mask_prob, mask_length, num_negatives, logit_temp: span masking and the contrastive loss (paper
            Sec. 3.2/4.2 of wav2vec 2.0: 0.65, 10, 100, 0.1).
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "conv",  # conv feature encoder: GroupNorm of the first layer (Base, extractor_mode="default") or a
        # LayerNorm in every layer (the Large preset's "layer_norm"; the paper's Large: default)
        "post_extract",  # after the feature encoder, before the projection (fairseq layer_norm)
        "attn",  # after (Base, post-norm) or before (Large, layer_norm_first) self-attention
        "ffn",  # after or before the FFN
        "embed",  # the encoder's own norm under post-norm: after the position embedding
        "final",  # the encoder's own norm under pre-norm: after the last block
    )

    def __init__(
        self,
        norm: NormFactory | str | None = None,
        extractor_mode: str = "default",
        conv_channels: int = 512,
        conv_bias: bool = False,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_dim: int = 3072,
        layer_norm_first: bool = False,
        keep_norms: tuple[str, ...] | list[str] = ("conv",),
        final_dim: int = 256,
        latent_groups: int = 2,
        latent_vars: int = 320,
        pos_conv_kernel: int = 128,
        pos_conv_groups: int = 16,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        dropout_input: float = 0.1,
        dropout_features: float = 0.1,
        layerdrop: float = 0.05,
        feature_grad_mult: float = 0.1,
        mask_prob: float = 0.65,
        mask_length: int = 10,
        num_negatives: int = 100,
        logit_temp: float = 0.1,
    ) -> None:
        super().__init__()
        if extractor_mode not in EXTRACTOR_MODES:
            valid = ", ".join(EXTRACTOR_MODES)
            raise ValueError(f"unknown extractor_mode {extractor_mode!r}; valid modes are: {valid}")
        keep_norms = tuple(keep_norms)
        if set(keep_norms) - set(KEEPABLE_SITES):
            raise ValueError(f"keep_norms {list(keep_norms)}: only {', '.join(KEEPABLE_SITES)} can keep their norm")
        norm = build_norm_factory(norm)
        conv_dim = conv_channels
        self.dropout_rate, self.feature_grad_mult = dropout, feature_grad_mult
        self.mask_prob, self.mask_length, self.num_negatives, self.logit_temp = (
            mask_prob,
            mask_length,
            num_negatives,
            logit_temp,
        )

        # The sites in keep_norms keep fairseq's own norms whatever the config's norm (paper App. A).
        with deferred_init(self):  # built once, by reset_parameters() (the model protocol)
            kept = build_norm_factory("layernorm")
            self.feature_extractor = FeatureEncoder(
                extractor_mode, conv_channels, conv_bias, norm, kept if "conv" in keep_norms else None
            )
            post_norm = kept if "post_extract" in keep_norms else norm
            self.post_extract_norm = post_norm(conv_dim, site="post_extract", eps=LN_EPS)
            self.post_extract_proj = nn.Linear(conv_dim, embed_dim)
            self.dropout_input, self.dropout_features = nn.Dropout(dropout_input), nn.Dropout(dropout_features)
            self.mask_emb = nn.Parameter(torch.empty(embed_dim))
            layer_kwargs = {
                "ffn_dim": ffn_dim,
                "num_heads": num_heads,
                "dropout": dropout,
                "attention_dropout": attention_dropout,
                "activation_dropout": activation_dropout,
                "layer_norm_first": layer_norm_first,
            }
            self.encoder = TransformerEncoder(
                embed_dim, depth, layer_kwargs, pos_conv_kernel, pos_conv_groups, layerdrop, norm
            )
            self.quantizer = GumbelQuantizer(conv_dim, final_dim, latent_groups, latent_vars)
            self.project_q = nn.Linear(final_dim, final_dim)
            self.final_proj = nn.Linear(embed_dim, final_dim)
        group_norms = sum(isinstance(m, nn.GroupNorm) for m in self.feature_extractor.modules())
        self.norm_options = {
            "norms": norm.resolved(),
            "kept_norms": kept.resolved()
            + ([{"site": "conv", "norm": "groupnorm", "count": group_norms}] if group_norms else []),
        }

    def resolved_options(self) -> dict:
        """The norms as built, per site; ``kept_norms`` are the ones ``keep_norms`` kept from fairseq."""
        return self.norm_options

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """Half a second of random 16 kHz audio per example (24 frames: room for masks and negatives)."""
        return (torch.randn(batch, 8000, device=self.mask_emb.device),)

    def reset_parameters(self) -> None:
        """fairseq's init: BERT init (N(0, 0.02), zero bias) for the Transformer blocks' linears, Kaiming
        normal for the feature encoder's convs, PyTorch's default for the other linears, U(0, 1) mask
        embedding; the position conv and the quantizer have their own (see them). Also the way to
        initialise a model built on the meta device after ``to_empty()``."""
        nn.init.uniform_(self.mask_emb)
        self.encoder.pos_conv.reset_parameters(self.dropout_rate)
        self.quantizer.reset_parameters()
        blocks = {id(m) for layer in self.encoder.layers for m in layer.modules()}
        for module in self.modules():
            if module is self or module in (self.encoder.pos_conv, self.quantizer, self.quantizer.weight_proj):
                continue
            if isinstance(module, nn.Linear) and id(module) in blocks:
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv1d) and module is not self.encoder.pos_conv.conv:
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Linear, nn.GroupNorm)) or (
                hasattr(module, "reset_parameters") and not list(module.children())
            ):
                module.reset_parameters()

    def init_from_state_dict(self, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """``init_from`` key mapping: a Hugging Face ``Wav2Vec2ForPreTraining`` checkpoint (a local HF dir)
        is renamed to our names; our own checkpoints load as they are."""
        return from_hf_state_dict(state) if source == "huggingface" else state

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks: FSDP2 shards and activation checkpointing wrap each of them."""
        return list(self.encoder.layers)

    def forward(
        self,
        source: torch.Tensor,
        mask: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        temperature: float = 2.0,
    ) -> Wav2Vec2Output:
        """Waveforms (B, samples) -> ``Wav2Vec2Output``. ``mask`` (B, frames) and ``negatives`` (see
        ``sample_negatives``) are drawn here from the torch RNG unless given; ``temperature`` is the
        Gumbel temperature of this update (the task anneals it)."""
        features = scale_grad(self.feature_extractor(source), self.feature_grad_mult).transpose(1, 2)
        features_pen = features.float().pow(2).mean()
        features = self.post_extract_norm(features)
        targets_in = self.dropout_features(features)
        x = self.dropout_input(self.post_extract_proj(features))
        B, T, _ = x.shape
        if mask is None:
            mask = sample_mask(B, T, self.mask_prob, self.mask_length, device=x.device)
        if negatives is None:
            negatives = sample_negatives(mask, self.num_negatives)
        x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        projected = self.final_proj(self.encoder(x))

        quantized, stats = self.quantizer(targets_in, mask, temperature)
        targets = self.project_q(quantized)
        flat = targets.reshape(B * T, -1)
        positives = flat[mask.flatten()]
        candidates = torch.cat([positives[:, None], flat[negatives]], dim=1)  # (M, 1 + N, D)
        predicted = projected[mask]
        logits = torch.cosine_similarity(predicted.float()[:, None], candidates.float(), dim=-1) / self.logit_temp
        # A distractor equal to the target (a collapsed codebook) would count as a wrong answer that is right.
        same = (candidates[:, 1:] == positives[:, None]).all(-1)
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)
        num_codes = self.quantizer.groups * self.quantizer.num_vars
        return Wav2Vec2Output(
            logits=logits,
            prob_perplexity=stats["prob_perplexity"],
            code_perplexity=stats["code_perplexity"],
            diversity=(num_codes - stats["prob_perplexity"]) / num_codes,
            features_pen=features_pen,
            projected_states=projected,
            projected_quantized_states=targets,
            mask=mask,
        )


# ---- size presets (wav2vec 2.0 paper Sec. 4.2; fairseq wav2vec2_base_librispeech.yaml, ----------
# ---- wav2vec2_large_librivox.yaml; paper/wav2vec2_large.yaml changes Large's extractor) ----------


@register_model
def wav2vec2_base(norm=None, **kwargs) -> Wav2Vec2:
    return Wav2Vec2(norm, **kwargs)


@register_model
def wav2vec2_large(norm=None, **kwargs) -> Wav2Vec2:
    return Wav2Vec2(
        norm,
        **{
            "extractor_mode": "layer_norm",
            "conv_bias": True,
            "layer_norm_first": True,
            "embed_dim": 1024,
            "depth": 24,
            "num_heads": 16,
            "ffn_dim": 4096,
            "final_dim": 768,
            "layerdrop": 0.2,
            "feature_grad_mult": 1.0,
            **kwargs,
        },
    )


# CPU demo: Base's layout (GroupNorm conv encoder, post-norm) with a 32-channel conv encoder, two blocks of
# width 96, 2 x 64 codes and 10 distractors (chance: log2(11) = 3.46 bits).
@register_model
def wav2vec2_tiny(norm=None, **kwargs) -> Wav2Vec2:
    return Wav2Vec2(
        norm,
        **{
            "conv_channels": 32,
            "embed_dim": 96,
            "depth": 2,
            "num_heads": 4,
            "ffn_dim": 384,
            "final_dim": 64,
            "latent_vars": 64,
            "pos_conv_kernel": 32,
            "num_negatives": 10,
            **kwargs,
        },
    )
