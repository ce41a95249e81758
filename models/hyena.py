"""HyenaDNA (Nguyen et al. 2023) with every norm built by the norm factory.

A decoder of pre-norm blocks over single-nucleotide tokens: ``x + hyena(norm_mixer(x))`` then
``x + mlp(norm_ffn(x))``, a final norm, and a language-model head tied to the embedding. The Hyena
operator (Poli et al. 2023) replaces attention:

    in_proj -> short causal depthwise conv (kernel 3) -> split into x0, x1, v
    v <- long_conv(v * x1, h)   (FFT convolution, causal, plus a learned per-channel skip "bias")
    y  = out_proj(v * x0)       (order 2: two data-controlled gates)

The long filter ``h`` is implicit: a small MLP with sine activations maps positional features
(t, cos, -sin) of every position to one value per channel, and an exponential decay modulates it.

The paper (Sec. 5, Table 6) replaces each LayerNorm of HyenaDNA (its norm sites: ``HyenaDNA.NORM_SITES``)
by DyT and changes nothing else.

Upstream code read for this file: hyena-dna ``standalone_hyenadna.py`` (HyenaOperator, HyenaFilter,
PositionalEmbedding, ExponentialModulation, LMBackbone, _init_weights) and its configs
(``configs/experiment/hg38/hg38_hyena.yaml``, ``configs/model/layer/hyena.yaml``). Differences: no fused
dropout-add-norm (same function), the LM head reuses the embedding matrix directly (upstream ties the
weights), and the classifier averages only non-padding positions (upstream's ``pool`` decoder averages
the left padding too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dyt.data.dna import BASE_IDS, PAD, VOCAB_SIZE
from dyt.nn import NormFactory, build_norm_factory
from models import deferred_init, embed_scale_init, register_model

LN_EPS = 1e-5  # upstream layer_norm_epsilon; a hint, so DyT ignores it


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Causal convolution ``y[..., t] = sum_{s<=t} k[:, t-s] u[..., s] + skip * u[..., t]`` by FFT.

    u: (B, D, L); k: (D, L); skip: (D,). Zero-padding to 2L turns the circular FFT convolution into a
    linear one, so no output sees a later input. Computed in fp32 (cuFFT's half precision needs
    power-of-two lengths, and the long sums lose too much in bf16).
    """
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k.float(), n=n), n=n)[..., :L]
    return (y + u.float() * skip.float()[:, None]).to(u.dtype)


def random_bases(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """(batch, length) token ids of random A, C, G, T (from the torch RNG)."""
    return torch.randint(BASE_IDS["A"], BASE_IDS["T"] + 1, (batch, length), device=device)


def backbone_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """``init_from`` key filter of the DNA models: every key of a pretrained ``state`` but a classifier
    head; the model's own head keys map to None ("keep this model's init": a fine-tune's new head)."""
    kept: dict[str, torch.Tensor | None] = {k: v for k, v in state.items() if not k.startswith("head.")}
    kept.update({k: None for k in model.state_dict() if k.startswith("head.")})
    return kept


def masked_mean(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, C) features over the positions whose token is not padding -> (B, C)."""
    keep = (tokens != PAD).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1)


# --------------------------------------------------------------------------------------------------
# The implicit long filter
# --------------------------------------------------------------------------------------------------
class Sin(nn.Module):
    """``sin(freq * x)`` with a learnable per-feature frequency initialised to ``w`` (upstream ``Sin``)."""

    def __init__(self, dim: int, w: float) -> None:
        super().__init__()
        self.w = w
        self.freq = nn.Parameter(torch.empty(1, dim))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.freq, self.w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """The implicit filter ``h`` (L, channels) and the skip term ``bias`` (channels,) of one operator.

    Positional features (non-trainable, upstream ``lr_pos_emb: 0``): ``t`` in [0, 1] and ``bands`` pairs
    (cos, -sin) of 2*pi*f*i/l_max. MLP: emb_dim -> order -> order -> order -> channels with one shared
    ``Sin`` after each hidden layer. Modulation: ``h * exp(-t * |delta_c|)`` with decay rates spread
    linearly over the channels so the filter falls to ``target`` at 30% (fast) to 150% (slow) of l_max.
    """

    def __init__(
        self,
        channels: int,
        l_max: int,
        emb_dim: int,
        order: int,
        w: float,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
    ) -> None:
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be odd and >= 3 (t plus cos/sin pairs); got {emb_dim}")
        self.channels, self.l_max, self.emb_dim = channels, l_max, emb_dim
        self.decay_range = (math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct)
        self.register_buffer("z", torch.empty(1, l_max, emb_dim), persistent=False)
        self.register_buffer("t", torch.empty(1, l_max, 1), persistent=False)
        self.register_buffer("deltas", torch.empty(1, 1, channels), persistent=False)
        self.mlp_in = nn.Linear(emb_dim, order)
        self.mlp_hidden = nn.ModuleList(nn.Linear(order, order) for _ in range(2))
        self.mlp_out = nn.Linear(order, channels, bias=False)
        self.act = Sin(order, w)
        self.bias = nn.Parameter(torch.empty(channels))

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """The positional features and decay rates: fixed functions of the shapes, not learned."""
        device = self.z.device
        positions = torch.arange(self.l_max, device=device, dtype=torch.float32)
        bands = (self.emb_dim - 1) // 2
        freqs = torch.linspace(1e-4, bands - 1, bands, device=device)
        angle = 2 * math.pi * positions[:, None] * freqs[None, :] / self.l_max
        t = torch.linspace(0, 1, self.l_max, device=device)[:, None]
        self.z.copy_(torch.cat([t, angle.cos(), -angle.sin()], dim=-1)[None])
        self.t.copy_(t[None])
        self.deltas.copy_(torch.linspace(*self.decay_range, self.channels, device=device).view(1, 1, -1))

    def filter(self, L: int) -> torch.Tensor:
        """The first ``L`` taps of the filter, (channels, L)."""
        h = self.act(self.mlp_in(self.z[:, :L]))
        for layer in self.mlp_hidden:
            h = self.act(layer(h))
        h = self.mlp_out(h) * torch.exp(-self.t[:, :L] * self.deltas.abs())
        return h[0].transpose(0, 1)


class HyenaOperator(nn.Module):
    """Order-N Hyena: N data-controlled gates around N-1 implicit long convolutions (HyenaDNA: N=2)."""

    def __init__(
        self, dim: int, l_max: int, order: int, filter_order: int, emb_dim: int, short_filter_order: int, w: float
    ) -> None:
        super().__init__()
        self.dim, self.order = dim, order
        self.in_proj = nn.Linear(dim, (order + 1) * dim)
        self.out_proj = nn.Linear(dim, dim)
        # Causal depthwise conv: pad both sides by k-1 and keep the first L outputs.
        width = (order + 1) * dim
        self.short_filter = nn.Conv1d(width, width, short_filter_order, groups=width, padding=short_filter_order - 1)
        self.filter = HyenaFilter(dim * (order - 1), l_max, emb_dim, filter_order, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        u = self.short_filter(self.in_proj(x).transpose(1, 2))[..., :L]
        *gates, v = u.split(self.dim, dim=1)
        k = self.filter.filter(L).view(self.order - 1, self.dim, L)
        skip = self.filter.bias.view(self.order - 1, self.dim)
        for i, gate in enumerate(reversed(gates[1:])):
            v = fft_causal_conv(v * gate, k[i], skip[i])
        return self.out_proj((v * gates[0]).transpose(1, 2))


# --------------------------------------------------------------------------------------------------
# Blocks and model
# --------------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    """``fc2(gelu_tanh(fc1 x))``, HyenaDNA's MLP (upstream ``activation=gelu(approximate='tanh')``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm_mixer(x))`` then ``x + mlp(norm_ffn(x))``."""

    def __init__(self, dim: int, d_inner: int, mixer: HyenaOperator, resid_dropout: float, norm: NormFactory) -> None:
        super().__init__()
        self.norm1 = norm(dim, site="mixer", eps=LN_EPS)
        self.mixer = mixer
        self.norm2 = norm(dim, site="ffn", eps=LN_EPS)
        self.mlp = Mlp(dim, d_inner)
        self.dropout = nn.Dropout(resid_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.mixer(self.norm1(x)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class HyenaDNA(nn.Module):
    """HyenaDNA: next-nucleotide logits (B, L, vocab_size), or class logits (B, num_classes).

    ``causal`` is True: output t depends on tokens <= t only (tests/test_hyena.py).

    Args:
        d_model, n_layer: width and depth.
        d_inner: MLP width (upstream: 4 * d_model).
        l_max: the longest input in tokens (upstream: max_length + 2); the implicit filter is defined
            on positions [0, l_max) and longer inputs are refused.
        order, filter_order, emb_dim, short_filter_order, w: Hyena operator settings (upstream 2, 64,
            5, 3, 10).
        embed_dropout, resid_dropout: dropout after the embedding and on each residual branch
            (upstream 0.1 and 0.0).
        num_classes: 0 for the language model; > 0 puts a linear classifier on the mean of the final
            features over the non-padding positions (GenomicBenchmarks fine-tuning).
        init_std: std of the embedding's (and, upstream, the linears') normal init (0.02).
        embed_scale: ``none`` (upstream), ``sqrt_d`` or ``unit``: a learnable scalar after the embedding,
            initialised to sqrt(d_model) or 1 / init_std (``models.embed_scale_init``; not upstream's: for
            DyT, which does not rescale the std-0.02 embedding as LayerNorm does; docs/analysis.md).
        norm: the norm factory, a norm name or a ``configs/norm`` mapping.
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "mixer",  # before each block's Hyena operator
        "ffn",  # before each block's MLP
        "final",  # after the last block, before the head
    )

    causal = True

    def __init__(
        self,
        *,
        d_model: int,
        n_layer: int,
        l_max: int,
        d_inner: int | None = None,
        vocab_size: int = VOCAB_SIZE,
        order: int = 2,
        filter_order: int = 64,
        emb_dim: int = 5,
        short_filter_order: int = 3,
        w: float = 10.0,
        embed_dropout: float = 0.1,
        resid_dropout: float = 0.0,
        num_classes: int = 0,
        init_std: float = 0.02,
        embed_scale: str = "none",
        norm=None,
    ) -> None:
        super().__init__()
        if order < 2:
            raise ValueError(f"Hyena needs order >= 2 (two gates and one long convolution); got {order}")
        norm = build_norm_factory(norm)
        self.d_model, self.n_layer, self.l_max = d_model, n_layer, l_max
        self.vocab_size, self.num_classes, self.init_std = vocab_size, num_classes, init_std
        self.embed_scale_kind, self.embed_scale_init = embed_scale, embed_scale_init(embed_scale, d_model, init_std)
        d_inner = d_inner or 4 * d_model

        with deferred_init(self):
            self.embed = nn.Embedding(vocab_size, d_model)
            self.embed_scale = nn.Parameter(torch.empty(1)) if self.embed_scale_init is not None else None
            self.embed_dropout = nn.Dropout(embed_dropout)
            self.layers = nn.ModuleList(
                Block(
                    d_model,
                    d_inner,
                    HyenaOperator(d_model, l_max, order, filter_order, emb_dim, short_filter_order, w),
                    resid_dropout,
                    norm,
                )
                for _ in range(n_layer)
            )
            self.norm_f = norm(d_model, site="final", eps=LN_EPS)
            self.head = nn.Linear(d_model, num_classes) if num_classes > 0 else None
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HyenaDNA's ``_init_weights``: every linear (filter MLP included) and the embedding N(0, 0.02),
        biases zero, the residual output projections (``out_proj``, ``fc2``) N(0, 0.02 / sqrt(2 n_layer))
        (GPT-2's scheme); convolutions, sine frequencies, norms and the filter's skip term (N(0, 1))
        reset themselves; positional buffers are recomputed."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                residual_out = name.endswith(("mixer.out_proj", "mlp.fc2"))
                std = self.init_std / math.sqrt(2 * self.n_layer) if residual_out else self.init_std
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.init_std)
            elif isinstance(module, HyenaFilter):
                module.reset_buffers()
                nn.init.normal_(module.bias)
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # short conv, Sin, norms
        if self.embed_scale is not None:
            self.embed_scale.fill_(self.embed_scale_init)

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks: FSDP2 shards and activation checkpointing wrap each of them."""
        return list(self.layers)

    def no_weight_decay(self) -> set[str]:
        """The implicit filters (upstream layer config ``wd: 0.0``); 1-D parameters skip decay anyway."""
        return {name for name, _ in self.named_parameters() if ".filter." in name}

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """Random bases (batch, 16) on the model's device."""
        return (random_bases(batch, min(16, self.l_max), self.embed.weight.device),)

    def resolved_options(self) -> dict:
        """The norms as built, per site (see the model protocol in ``models``)."""
        return {"norms": self.norm_options, "embed_scale": self.embed_scale_kind}

    def init_from_state_dict(self, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor | None]:
        """A pretrained HyenaDNA's weights for this model: all but a classifier head (``backbone_state``;
        the LM head is the embedding matrix, so a fine-tune keeps it)."""
        return backbone_state(self, state)

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) -> final normalized features (B, L, d_model)."""
        if tokens.shape[1] > self.l_max:
            raise ValueError(
                f"input of {tokens.shape[1]} tokens is longer than this HyenaDNA allows (l_max={self.l_max}); "
                f"shorten the sequences (data max_length) or use a preset with a longer l_max"
            )
        x = self.embed(tokens)
        x = self.embed_dropout(x if self.embed_scale is None else x * self.embed_scale)
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(tokens)
        if self.head is not None:
            return self.head(masked_mean(x, tokens))
        return F.linear(x, self.embed.weight)


# --------------------------------------------------------------------------------------------------
# Presets: the released HyenaDNA checkpoints (Hugging Face LongSafari/hyenadna-<name>-seqlen config.json:
# d_model, n_layer, d_inner = 4 d_model, l_max = max_length + 2), plus a CPU size.
# --------------------------------------------------------------------------------------------------
def _hyena(norm, kwargs, **shape) -> HyenaDNA:
    return HyenaDNA(norm=norm, **{**shape, **kwargs})


@register_model
def hyenadna_tiny_1k(norm=None, **kwargs) -> HyenaDNA:  # hyena-dna genomic_benchmark.yaml's backbone (2 x 128)
    return _hyena(norm, kwargs, d_model=128, n_layer=2, l_max=1026)


# The paper's HyenaDNA (Derf Table 20: seq 1024, lr 6e-4, batch 1024, 10k steps, RC aug) is the recipe of
# caduceus slurm_scripts/run_pretrain_hyena.sh: d_model 256, n_layer 4 (small-32k's shape) at 1k context.
@register_model
def hyenadna_small_1k(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=256, n_layer=4, l_max=1026)


@register_model
def hyenadna_tiny_1k_d256(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=256, n_layer=2, l_max=1026)


@register_model
def hyenadna_tiny_16k(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=128, n_layer=2, l_max=16386)


@register_model
def hyenadna_small_32k(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=256, n_layer=4, l_max=32770)


@register_model
def hyenadna_medium_160k(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=256, n_layer=8, l_max=160002)


@register_model
def hyenadna_medium_450k(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=256, n_layer=8, l_max=450002)


@register_model
def hyenadna_large_1m(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=256, n_layer=8, l_max=1_000_002)


# CPU demo and tests: 200-bp regions, 2 narrow blocks, a 16-wide filter MLP.
@register_model
def hyenadna_cpu(norm=None, **kwargs) -> HyenaDNA:
    return _hyena(norm, kwargs, d_model=32, n_layer=2, l_max=258, filter_order=16)
