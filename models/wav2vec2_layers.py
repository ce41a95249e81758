"""wav2vec 2.0's parts below the Transformer (``models.wav2vec2`` assembles them): the convolutional
feature encoder, the Gumbel product quantizer, and the span masking and distractor sampling of
pretraining (fairseq ``wav2vec2.py``, ``gumbel_vector_quantizer.py``, ``data_utils.compute_mask_indices``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyt.nn import NormFactory

# fairseq's default conv_feature_layers: (channels, kernel, stride); 320x downsampling, receptive field 400.
CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, used by fairseq and Hugging Face; a hint, so DyT ignores it


def receptive_field(conv_layers=CONV_LAYERS) -> int:
    """Samples one output frame sees: the shortest input that yields one frame (400 for the default)."""
    field = 1
    for _, kernel, stride in reversed(conv_layers):
        field = (field - 1) * stride + kernel
    return field


def num_frames(num_samples: int, conv_layers=CONV_LAYERS) -> int:
    """Frames the feature encoder makes from ``num_samples`` samples (0 below the receptive field)."""
    for _, kernel, stride in conv_layers:
        num_samples = max((num_samples - kernel) // stride + 1, 0)
    return num_samples


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward whose backward multiplies the gradient by ``scale`` (fairseq ``GradMultiply``;
    Base trains its feature encoder with ``feature_grad_mult=0.1``)."""
    return x if scale == 1.0 else x * scale + x.detach() * (1.0 - scale)


# --------------------------------------------------------------------------------------------------
# Masking and negatives (drawn from the torch RNG, so the trainer's per-step seeding makes them exact)
# --------------------------------------------------------------------------------------------------
def sample_mask(
    batch: int, frames: int, mask_prob: float, mask_length: int, min_masks: int = 2, device=None
) -> torch.Tensor:
    """Span mask (batch, frames) as fairseq's ``compute_mask_indices`` draws it for pretraining (static
    span length, overlaps allowed, ``min_masks=2``): each row starts ``int(mask_prob * frames /
    mask_length + U(0,1))`` spans of ``mask_length`` frames at distinct random positions, then every row
    is cut down at random to the smallest masked count of the batch, so all rows mask the same number."""
    if frames <= mask_length:
        raise ValueError(
            f"cannot mask spans of {mask_length} frames in {frames} frames; use longer crops "
            f"(data.min_sample_size) or a shorter model.mask_length"
        )
    rows = []
    for _ in range(batch):
        num_spans = max(min_masks, int(mask_prob * frames / mask_length + torch.rand(()).item()))
        num_spans = min(num_spans, frames - mask_length)
        starts = torch.randperm(frames - mask_length)[:num_spans]
        rows.append(torch.unique(starts[:, None] + torch.arange(mask_length)).clamp(max=frames - 1))
    shortest = min(len(r) for r in rows)
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for i, idx in enumerate(rows):
        mask[i, idx[torch.randperm(len(idx))[:shortest]]] = True
    return mask.to(device)


def sample_negatives(mask: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """(M, num_negatives) distractor indices into the flattened (batch * frames) targets, one row per
    masked frame in (batch, frame) order: uniform over the other masked frames of the same utterance
    (fairseq ``sample_negatives`` with ``cross_sample_negatives=0``; never the positive itself)."""
    batch, frames = mask.shape
    out = []
    for i in range(batch):
        positions = mask[i].nonzero().squeeze(1)
        n = len(positions)
        if n < 2:
            raise ValueError(f"utterance {i} has {n} masked frame(s); negatives need at least 2")
        drawn = torch.randint(0, n - 1, (n, num_negatives))
        drawn = drawn + (drawn >= torch.arange(n)[:, None]).long()  # skip the positive, keep it uniform
        out.append(positions.cpu()[drawn] + i * frames)
    return torch.cat(out).to(mask.device)


# --------------------------------------------------------------------------------------------------
# Feature encoder
# --------------------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """Conv1d -> optional norm over channels -> GELU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool, norm: nn.Module | None):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, bias=bias)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    """Waveform (B, samples) -> features (B, channels, frames)."""

    def __init__(self, mode: str, channels: int, conv_bias: bool, norm: NormFactory, kept: NormFactory | None) -> None:
        """``kept``: the LayerNorm factory of kept conv norms (``keep_norms`` has ``conv``), else None."""
        super().__init__()
        layers, in_ch = [], 1
        for i, (_, kernel, stride) in enumerate(CONV_LAYERS):
            ch = channels
            if mode == "layer_norm" or i == 0:
                layer_norm = mode == "layer_norm"
                layer_norm_factory = kept or norm
                if kept is not None and not layer_norm:
                    # GroupNorm with one group per channel normalises each channel over time; it is not a
                    # norm DyT replaces (paper App. A keeps it), so it stays torch's layer.
                    conv_norm = nn.GroupNorm(ch, ch, eps=LN_EPS)
                else:
                    conv_norm = layer_norm_factory(ch, site="conv", layout="channels_first", eps=LN_EPS)
            else:
                conv_norm = None
            layers.append(ConvLayer(in_ch, ch, kernel, stride, conv_bias, conv_norm))
            in_ch = ch
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


# --------------------------------------------------------------------------------------------------
# Quantizer
# --------------------------------------------------------------------------------------------------
class GumbelQuantizer(nn.Module):
    """Product quantizer: ``groups`` codebooks of ``num_vars`` entries of width ``dim / groups``. Training
    picks one entry per group with a straight-through hard Gumbel softmax at ``temperature``; evaluation
    takes the argmax. ``prob_perplexity`` (the diversity loss's input) is the perplexity of the soft
    code distribution averaged over the masked frames, summed over groups, in training and evaluation
    alike (fairseq ``GumbelVectorQuantizer``; it adds 1e-7 inside the log, which moves the perplexity
    by less than 1e-5 relative, we take the exact entropy as Hugging Face does)."""

    def __init__(self, in_dim: int, dim: int, groups: int, num_vars: int) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"codevector dim {dim} is not divisible by {groups} groups")
        self.groups, self.num_vars = groups, num_vars
        self.codevectors = nn.Parameter(torch.empty(1, groups * num_vars, dim // groups))
        self.weight_proj = nn.Linear(in_dim, groups * num_vars)

    def reset_parameters(self) -> None:
        """fairseq: codebook U(0, 1), projection N(0, 1) with zero bias."""
        nn.init.uniform_(self.codevectors)
        nn.init.normal_(self.weight_proj.weight, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict]:
        B, T, _ = x.shape
        logits = self.weight_proj(x).view(B * T * self.groups, self.num_vars).float()
        hard = F.one_hot(logits.argmax(-1), self.num_vars).to(logits.dtype)
        probs = torch.softmax(logits.view(B * T, self.groups, self.num_vars), dim=-1)[mask.flatten()].mean(0)
        hard_probs = hard.view(B * T, self.groups, self.num_vars)[mask.flatten()].mean(0)
        stats = {
            "prob_perplexity": _perplexity(probs),
            "code_perplexity": _perplexity(hard_probs).detach(),
        }
        onehot = F.gumbel_softmax(logits, tau=temperature, hard=True) if self.training else hard
        onehot = onehot.type_as(x).view(B * T, self.groups * self.num_vars, 1)
        q = (onehot * self.codevectors).view(B * T, self.groups, self.num_vars, -1).sum(2)
        return q.view(B, T, -1), stats


def _perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy) of (groups, num_vars) distributions."""
    return torch.exp(-torch.special.xlogy(probs, probs).sum(-1)).sum()
