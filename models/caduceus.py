"""Caduceus (Schiff et al. 2024) with every norm built by the norm factory.

Caduceus stacks bidirectional Mamba blocks, ``x + bimamba(norm_mixer(x))``, with a final norm and a
masked-language-model head over single-nucleotide tokens. Its default norm is RMSNorm (upstream
``rms_norm: true``, eps 1e-5, no bias); Derf (Tables 11, 20, 25) reports the paper's Caduceus column
against RMSNorm. Norm sites: ``Caduceus.NORM_SITES``.

- **Mamba** (Gu and Dao 2023; mamba_ssm ``mamba_simple.py``): in_proj -> (x, z); x -> causal depthwise
  conv -> SiLU -> selective SSM (input-dependent dt, B, C; A = -exp(A_log)); y = (ssm(x) + D x) * SiLU(z)
  -> out_proj. Parameter names are those of mamba_ssm and Hugging Face ``MambaMixer``.
- **Bidirectional** (caduceus ``BiMambaWrapper``, strategy ``add``, weight tie): the same in/out
  projections serve a forward scan and a scan of the reversed sequence, each with its own conv and SSM
  parameters (``fwd``, ``rev``); their outputs are added before the gate.
- **RC parameter sharing** (Caduceus-PS; caduceus ``modeling_rcps.py``): the hidden state has 2 x
  d_model channels, the forward-strand half and the reverse-complement half stored flipped in position
  and channel. Every layer runs on the first half and on the reverse complement of the second, with the
  same weights, so the model is reverse-complement equivariant: the reverse complement of the input
  gives the reverse complement of the output (tests/test_caduceus.py checks it).

The selective scan runs in pure PyTorch (``selective_scan``, chunked in ~sqrt(L) pieces) on any device; on CUDA with
``mamba_ssm`` installed, ``use_fast_path`` hands it to mamba_ssm's kernel (never a hard dependency).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from dyt.data.dna import VOCAB_SIZE, complement_ids
from dyt.nn import NormFactory, build_norm_factory
from models import deferred_init, embed_scale_init, register_model
from models.hyena import backbone_state, masked_mean, random_bases

try:  # optional CUDA kernel
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except ImportError:  # CPU machines, or mamba_ssm not installed
    selective_scan_fn = None

NORM_EPS = 1e-5  # upstream norm_epsilon; a hint, so DyT ignores it


# --------------------------------------------------------------------------------------------------
# Selective scan in pure PyTorch
# --------------------------------------------------------------------------------------------------
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mamba's selective SSM, ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t h_t + D u_t``.

    u, delta: (B, D, L); A: (D, N); B, C: (B, N, L); D: (D,) -> y (B, D, L), computed in fp32 (or
    fp64 for fp64 inputs). Two-level chunked scan: the sequence is cut into chunks of T steps
    (default ~sqrt(L)); (1) every chunk is scanned from a zero state, all chunks at once (T steps);
    (2) the state entering each chunk is carried across chunks (L/T steps); (3) it is added to the local
    states, decayed by exp of the running sum of delta*A within the chunk (<= 0, so it cannot overflow).
    About 2 sqrt(L) sequential steps instead of L, with the memory of a step-by-step scan.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    batch, channels, L = u.shape
    T = chunk_size or max(1, math.isqrt(L))
    pad = (-L) % T
    nc = (L + pad) // T
    # Padded steps have zero log-decay and zero input: they leave the state unchanged.
    dA = F.pad(delta, (0, pad)).unsqueeze(-1) * A[:, None, :]
    dBu = F.pad(delta * u, (0, pad)).unsqueeze(-1) * F.pad(B, (0, pad)).transpose(1, 2).unsqueeze(1)
    dA = dA.view(batch, channels, nc, T, -1)
    dBu = dBu.view(batch, channels, nc, T, -1)

    decay = dA.exp()
    h = torch.zeros_like(dBu[:, :, :, 0])
    local = []
    for t in range(T):
        h = decay[:, :, :, t] * h + dBu[:, :, :, t]
        local.append(h)
    log_decay = dA.cumsum(3)
    chunk_decay = log_decay[:, :, :, -1].exp()
    carry = [torch.zeros_like(h[:, :, 0])]
    for c in range(nc - 1):
        carry.append(chunk_decay[:, :, c] * carry[-1] + local[-1][:, :, c])
    states = torch.stack(local, 3) + log_decay.exp() * torch.stack(carry, 2).unsqueeze(3)
    Cc = F.pad(C, (0, pad)).transpose(1, 2).reshape(batch, 1, nc, T, -1)
    y = (states * Cc).sum(-1).reshape(batch, channels, nc * T)[..., :L]
    return y + D.to(dtype)[:, None] * u


# --------------------------------------------------------------------------------------------------
# Mamba mixer
# --------------------------------------------------------------------------------------------------
class ScanBranch(nn.Module):
    """One direction of a Mamba mixer: causal depthwise conv, input-dependent (dt, B, C), selective SSM.

    Initialisation (mamba_ssm ``Mamba.__init__``): dt_proj weight U(-dt_rank^-0.5, dt_rank^-0.5); its
    bias the inverse softplus of dt ~ log-uniform in [dt_min, dt_max] (floored at dt_init_floor);
    A_log = log(1..d_state) for every channel (S4D-real); D = 1; conv and x_proj PyTorch's default.
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
        chunk_size: int | None,
        use_fast_path: bool,
    ) -> None:
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.dt_range, self.dt_init_floor = (dt_min, dt_max), dt_init_floor
        self.chunk_size, self.use_fast_path = chunk_size, use_fast_path
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.conv1d.reset_parameters()
        self.x_proj.reset_parameters()
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        lo, hi = (math.log(v) for v in self.dt_range)
        dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (hi - lo) + lo).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        full = states.log().expand(self.A_log.shape).contiguous()
        if isinstance(self.A_log, DTensor):  # a shard under FSDP2: take this rank's part, no communication
            full = distribute_tensor(full, self.A_log.device_mesh, self.A_log.placements, src_data_rank=None)
        self.A_log.copy_(full)
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, d_inner, L) after in_proj -> SSM output (B, d_inner, L), before the gate."""
        L = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :L])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj.weight @ dt.transpose(1, 2)  # bias added with the softplus below
        A = -torch.exp(self.A_log.float())
        B, C = B.transpose(1, 2), C.transpose(1, 2)
        if self.use_fast_path and selective_scan_fn is not None and x.is_cuda:
            return selective_scan_fn(
                x, delta, A, B, C, self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True
            )
        delta = F.softplus(delta.float() + self.dt_proj.bias.float()[:, None])
        return selective_scan(x, delta, A, B, C, self.D, self.chunk_size).to(x.dtype)


class Mamba(nn.Module):
    """Mamba mixer (B, L, d_model) -> (B, L, d_model); ``bidirectional`` adds the scan of the reversed
    sequence (its own ``rev`` branch, shared in/out projections: caduceus ``bidirectional_weight_tie``)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bidirectional: bool = True,
        chunk_size: int | None = None,
        use_fast_path: bool = True,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        dt_rank = dt_rank or math.ceil(d_model / 16)  # mamba_ssm dt_rank="auto"
        branch = (d_inner, d_state, d_conv, dt_rank, dt_min, dt_max, dt_init_floor, chunk_size, use_fast_path)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.fwd = ScanBranch(*branch)
        self.rev = ScanBranch(*branch) if bidirectional else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        y = self.fwd(x)
        if self.rev is not None:
            # out_proj is linear and shared, so adding before it equals caduceus' sum of two outputs.
            y = y + self.rev(x.flip(-1)).flip(-1)
        return self.out_proj((y * F.silu(z)).transpose(1, 2))


# --------------------------------------------------------------------------------------------------
# Reverse-complement parameter sharing
# --------------------------------------------------------------------------------------------------
def rc_features(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement of RC-shared features (B, L, C): reverse positions and channels."""
    return x.flip(-2, -1)


def rc_shared(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` to the forward half of ``x`` and, with the same weights, to the reverse complement
    of the other half (caduceus ``RCPSWrapper``)."""
    fwd, rc = x.chunk(2, dim=-1)
    return torch.cat([fn(fwd), rc_features(fn(rc_features(rc)))], dim=-1)


class Block(nn.Module):
    """``x + mixer(norm(x))``, each applied RC-shared when ``rcps``."""

    def __init__(self, d_model: int, mamba_kwargs: dict, rcps: bool, norm: NormFactory) -> None:
        super().__init__()
        self.rcps = rcps
        self.norm = norm(d_model, site="mixer", eps=NORM_EPS)
        self.mixer = Mamba(d_model, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rcps:
            return x + rc_shared(self.mixer, rc_shared(self.norm, x))
        return x + self.mixer(self.norm(x))


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
class Caduceus(nn.Module):
    """Caduceus: masked-token logits (B, L, vocab_size), or class logits (B, num_classes).

    Args:
        d_model, n_layer: width of one strand's features and depth (Caduceus-PS carries 2 x d_model).
        d_state, d_conv, expand, dt_rank: Mamba settings (upstream 16, 4, 2, ceil(d_model / 16)).
        bidirectional: add the reversed-sequence scan (Caduceus; False gives a causal Mamba stack).
        rcps: reverse-complement parameter sharing (Caduceus-PS); needs the DNA vocabulary.
        num_classes: 0 for the MLM head (tied to the embedding); > 0 puts a linear classifier on the
            mean of the final features over the non-padding positions. With ``rcps`` it scores the two
            strands' features separately and averages (upstream ``conjoin_train``), so the class logits
            are reverse-complement invariant.
        chunk_size, use_fast_path: pure-PyTorch scan chunk; use mamba_ssm's CUDA kernel when installed.
        init_std: std of the embedding's (and, upstream, the linears') normal init (0.02).
        embed_scale: ``none`` (upstream), ``sqrt_d`` or ``unit``: a learnable scalar after the embedding,
            initialised to sqrt(d_model) or 1 / init_std (``models.embed_scale_init``; not upstream's: for
            DyT, which does not rescale the std-0.02 embedding as LayerNorm does; docs/analysis.md).
        norm: the norm factory, a norm name or a ``configs/norm`` mapping (default RMSNorm, as upstream).
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "mixer",  # before each block's bidirectional Mamba mixer
        "final",  # after the last block, before the head
    )

    def __init__(
        self,
        *,
        d_model: int,
        n_layer: int,
        vocab_size: int = VOCAB_SIZE,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        bidirectional: bool = True,
        rcps: bool = True,
        num_classes: int = 0,
        chunk_size: int | None = None,
        use_fast_path: bool = True,
        init_std: float = 0.02,
        embed_scale: str = "none",
        norm="rmsnorm",
    ) -> None:
        super().__init__()
        norm = build_norm_factory(norm)
        self.d_model, self.n_layer, self.rcps = d_model, n_layer, rcps
        # Output t depends on later tokens through the reversed scan or the reverse-complement strand.
        self.causal = not (bidirectional or rcps)
        self.vocab_size, self.num_classes, self.init_std = vocab_size, num_classes, init_std
        self.embed_scale_kind, self.embed_scale_init = embed_scale, embed_scale_init(embed_scale, d_model, init_std)
        mamba_kwargs = dict(
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dt_rank=dt_rank,
            bidirectional=bidirectional,
            chunk_size=chunk_size,
            use_fast_path=use_fast_path,
        )
        with deferred_init(self):
            self.embed = nn.Embedding(vocab_size, d_model)
            self.embed_scale = nn.Parameter(torch.empty(1)) if self.embed_scale_init is not None else None
            self.register_buffer("complement", torch.empty(vocab_size, dtype=torch.long), persistent=False)
            self.layers = nn.ModuleList(Block(d_model, mamba_kwargs, rcps, norm) for _ in range(n_layer))
            self.norm_f = norm(d_model, site="final", eps=NORM_EPS)
            self.head = nn.Linear(d_model, num_classes) if num_classes > 0 else None
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mamba_ssm's ``_init_weights`` as Caduceus configures it: embedding N(0, 0.02); each mixer's
        own init (``ScanBranch``; in_proj PyTorch's default); out_proj kaiming-uniform scaled by
        1/sqrt(n_layer) (one residual branch per layer); norms and the classifier reset themselves
        (classifier bias zero)."""
        self.complement.copy_(complement_ids(self.vocab_size))
        nn.init.normal_(self.embed.weight, std=self.init_std)
        if self.embed_scale is not None:
            self.embed_scale.fill_(self.embed_scale_init)
        for module in self.modules():
            if isinstance(module, Mamba):
                module.in_proj.reset_parameters()
                nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
                module.out_proj.weight /= math.sqrt(self.n_layer)
            elif isinstance(module, ScanBranch):
                module.reset_parameters()
            elif module is self.head:
                module.reset_parameters()
                nn.init.zeros_(module.bias)
            elif hasattr(module, "pointwise"):  # the norms
                module.reset_parameters()

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks: FSDP2 shards and activation checkpointing wrap each of them."""
        return list(self.layers)

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """Random bases (batch, 16) on the model's device."""
        return (random_bases(batch, 16, self.embed.weight.device),)

    def resolved_options(self) -> dict:
        """The norms as built, per site, and the Caduceus variant (see the model protocol in ``models``)."""
        return {
            "norms": self.norm_options,
            "rcps": self.rcps,
            "causal": self.causal,
            "embed_scale": self.embed_scale_kind,
        }

    def init_from_state_dict(self, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor | None]:
        """A pretrained Caduceus's weights for this model: all but a classifier head (``backbone_state``)."""
        return backbone_state(self, state)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, d_model), or with ``rcps`` (B, L, 2 d_model): the embedding of the sequence
        and, flipped, that of its reverse complement (caduceus ``RCPSEmbedding``)."""
        x = self.embed(tokens)
        if self.rcps:
            rc_tokens = self.complement[tokens.flip(-1)]
            x = torch.cat([x, rc_features(self.embed(rc_tokens))], dim=-1)
        return x if self.embed_scale is None else x * self.embed_scale  # a scalar: RC-equivariance holds

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) -> final normalized features (B, L, d_model or 2 d_model)."""
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        return rc_shared(self.norm_f, x) if self.rcps else self.norm_f(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(tokens)
        if self.head is not None:
            if not self.rcps:
                return self.head(masked_mean(x, tokens))
            fwd, rc = x.chunk(2, dim=-1)
            return (self.head(masked_mean(fwd, tokens)) + self.head(masked_mean(rc.flip(-1), tokens))) / 2
        if not self.rcps:
            return F.linear(x, self.embed.weight)
        # caduceus RCPSLMHead: the rc half scores each token's complement with the same weights.
        fwd, rc = x.chunk(2, dim=-1)
        return F.linear(fwd, self.embed.weight) + F.linear(rc.flip(-1), self.embed.weight[self.complement])


# --------------------------------------------------------------------------------------------------
# Presets: the released Caduceus checkpoints (Hugging Face kuleshov-group/caduceus-{ps,ph}_seqlen-<n>_
# d_model-<d>_n_layer-<n>: d_model 256, n_layer 16 at 131k; the paper's runs use 8 layers, see
# configs/experiment/paper/caduceus_pretrain.yaml), plus a CPU size. Sequence length is data, not a
# model shape: the presets differ in d_model, n_layer and rcps.
# --------------------------------------------------------------------------------------------------
def _caduceus(norm, kwargs, **shape) -> Caduceus:
    return Caduceus(norm="rmsnorm" if norm is None else norm, **{**shape, **kwargs})


@register_model
def caduceus_ps_131k(norm=None, **kwargs) -> Caduceus:  # the released 131k checkpoint's shape
    return _caduceus(norm, kwargs, d_model=256, n_layer=16, rcps=True)


@register_model
def caduceus_ph_131k(norm=None, **kwargs) -> Caduceus:
    return _caduceus(norm, kwargs, d_model=256, n_layer=16, rcps=False)


@register_model
def caduceus_ps_1k(norm=None, **kwargs) -> Caduceus:
    return _caduceus(norm, kwargs, d_model=256, n_layer=4, rcps=True)


@register_model
def caduceus_ph_1k(norm=None, **kwargs) -> Caduceus:
    return _caduceus(norm, kwargs, d_model=256, n_layer=4, rcps=False)


# CPU demo and tests: 200-bp regions, 2 narrow RC-shared blocks.
@register_model
def caduceus_cpu(norm=None, **kwargs) -> Caduceus:
    return _caduceus(norm, kwargs, d_model=32, n_layer=2, rcps=True, d_state=8)
