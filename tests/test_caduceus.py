"""Caduceus: Mamba parity with Hugging Face, the chunked scan, RC equivariance, every norm, convert."""

from __future__ import annotations

import pytest
import torch

import dyt
import models
from dyt.data.dna import PAD, complement_ids
from models.caduceus import Mamba, selective_scan

NORMS = ("rmsnorm", "layernorm", {"name": "dyt", "impl": "eager"}, {"name": "derf", "impl": "eager"})


def _tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(7, 12, (batch, length), generator=torch.Generator().manual_seed(seed))


def _reverse_complement(tokens: torch.Tensor) -> torch.Tensor:
    return complement_ids()[tokens.flip(-1)]


def test_mamba_mixer_equals_hugging_face(one_thread):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    torch.manual_seed(0)
    config = MambaConfig(hidden_size=16, state_size=8, intermediate_size=32, conv_kernel=4, time_step_rank=3)
    reference = MambaMixer(config, layer_idx=0).eval()
    ours = Mamba(16, d_state=8, d_conv=4, expand=2, dt_rank=3, bidirectional=False).eval()
    # Same parameter names, except that ours keeps the scan's parameters in its forward branch.
    branch = ("conv1d", "x_proj", "dt_proj", "A_log", "D")
    ours.load_state_dict(
        {(f"fwd.{k}" if k.split(".")[0] in branch else k): v for k, v in reference.state_dict().items()}
    )
    with torch.no_grad():
        torch.nn.init.normal_(ours.fwd.dt_proj.bias, std=1.0)  # a spread of step sizes, not the init's narrow band
        reference.dt_proj.bias.copy_(ours.fwd.dt_proj.bias)
        x = torch.randn(2, 45, 16)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64])
def test_chunked_scan_equals_step_by_step_recurrence_in_float64(chunk_size):
    gen = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 3, 4, 50
    u, B, C = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((b, d, L), (b, n, L), (b, n, L)))
    delta = torch.rand(b, d, L, generator=gen, dtype=torch.float64)
    A = -torch.rand(d, n, generator=gen, dtype=torch.float64) * 5
    D = torch.randn(d, generator=gen, dtype=torch.float64)
    h = torch.zeros(b, d, n, dtype=torch.float64)
    expected = []
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        expected.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    y = selective_scan(u, delta, A, B, C, D, chunk_size)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, torch.stack(expected, -1), atol=1e-12, rtol=1e-12)


def test_caduceus_ps_is_reverse_complement_equivariant(one_thread):
    torch.manual_seed(0)
    model = models.create_model("caduceus_cpu", norm="rmsnorm").eval()
    tokens = _tokens(2, 33)
    with torch.no_grad():
        logits, rc_logits = model(tokens), model(_reverse_complement(tokens))
    # Reverse complement of the output: reverse the positions and score each token's complement.
    torch.testing.assert_close(rc_logits, logits.flip(1)[..., complement_ids()], atol=1e-5, rtol=1e-5)


def test_caduceus_ps_classifier_is_reverse_complement_invariant(one_thread):
    torch.manual_seed(0)
    model = models.create_model("caduceus_cpu", norm=NORMS[2], num_classes=2).eval()
    tokens = torch.cat([_tokens(2, 20), torch.full((2, 4), PAD)], dim=1)  # padded on the right
    with torch.no_grad():
        torch.testing.assert_close(model(_reverse_complement(tokens)), model(tokens), atol=1e-5, rtol=1e-5)


def test_unidirectional_mamba_stack_is_causal_and_bidirectional_is_not():
    torch.manual_seed(0)
    tokens = _tokens(1, 24)
    changed = tokens.clone()
    changed[:, 16:] = _tokens(1, 8, seed=1)
    for bidirectional, past_changes in ((False, False), (True, True)):
        model = models.create_model("caduceus_cpu", norm="rmsnorm", rcps=False, bidirectional=bidirectional)
        with torch.no_grad():
            diff = (model(tokens)[:, :16] - model(changed)[:, :16]).abs().max()
        assert (diff > 1e-4) == past_changes


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n if isinstance(n, str) else n["name"])
def test_every_norm_trains_forward_and_backward(norm, one_thread):
    model = models.create_model("caduceus_cpu", norm=norm)
    logits = model(_tokens(2, 24))
    assert logits.shape == (2, 24, 16)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    pointwise = [name for name, m in model.named_modules() if getattr(m, "pointwise", False)]
    assert len(pointwise) == (3 if isinstance(norm, dict) else 0)  # one per block + the final norm


def test_default_norm_is_rmsnorm_without_bias_and_eps_1e5():
    model = models.caduceus.Caduceus(d_model=8, n_layer=1)
    norm = model.layers[0].norm
    assert type(norm).__name__ == "RMSNorm" and norm.bias is None and norm.eps == 1e-5


def test_paper_preset_shapes():
    # kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16 (run_pretrain_caduceus.sh).
    with torch.device("meta"):
        model = models.create_model("caduceus_ps_131k", norm="rmsnorm")
    assert (model.d_model, model.n_layer, model.rcps) == (256, 16, True)
    mixer = model.layers[0].mixer
    assert mixer.in_proj.weight.shape == (1024, 256) and mixer.fwd.A_log.shape == (512, 16)
    assert mixer.fwd.dt_proj.weight.shape == (512, 16)  # dt_rank = ceil(256 / 16)


def test_convert_replaces_every_norm():
    model = models.create_model("caduceus_cpu", norm="rmsnorm")
    report = dyt.convert(model, to="dyt")
    assert report.total == 3 and set(report.by_site) == {"layers.norm", "norm_f"}
    assert model.layers[0].norm.bias is None  # RMSNorm had no bias, so neither has its DyT
