"""Training FLOPs of a dense transformer, counted as torchtitan counts them
(``torchtitan/models/utils.py``, ``get_dense_model_nparams_and_flops``).

One training step costs 6 FLOPs per token for every parameter that multiplies that token (2 in the
forward pass, 4 in the backward), plus, for self-attention's two matmuls, 6 x n_layers x n_heads x
(qk + v head dims) x seq_len = 12 x n_layers x dim x seq_len per token. The causal mask's sparsity is
not subtracted and activation recomputation is not added; embedding lookups are no matmuls and are left
out. Each family states its own count (``flops_per_token``, ``flops_per_image``) because which parameters
act once per token and which once per sample differs (a ViT's head, DiT's adaLN).
"""

from __future__ import annotations

from torch import nn


def matmul_params(module: nn.Module, per_sample: tuple[nn.Module, ...] = ()) -> int:
    """Parameters of ``module`` that multiply every token: all but those of ``nn.Embedding`` lookups
    and of the ``per_sample`` modules (applied once per sample). Tied parameters count once."""
    skip = {
        id(p)
        for m in module.modules()
        if isinstance(m, nn.Embedding) or any(m is s for s in per_sample)
        for p in m.parameters()
    }
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def transformer_flops_per_token(params: int, n_layers: int, dim: int, seq_len: int) -> int:
    """Training FLOPs per token of a dense transformer with ``params`` per-token matmul parameters
    (torchtitan's count; see the module docstring)."""
    return 6 * params + 12 * n_layers * dim * seq_len
