"""HyenaDNA: FFT convolution, causality, every norm, presets and convert (meta init, its non-persistent
buffers included: tests/test_model_contract.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dyt
import models
from dyt.data.dna import PAD
from models.hyena import HyenaDNA, fft_causal_conv

# Point-wise norms in plain PyTorch: the fused CPU kernels compile for ~15 s on first use.
NORMS = ("layernorm", "rmsnorm", {"name": "dyt", "impl": "eager"}, {"name": "derf", "impl": "eager"})


def _tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(7, 12, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_fft_convolution_equals_direct_causal_convolution():
    gen = torch.Generator().manual_seed(0)
    u, k, skip = torch.randn(2, 3, 37, generator=gen), torch.randn(3, 37, generator=gen), torch.randn(3, generator=gen)
    # conv1d is a correlation: flip the kernel and pad on the left only, so output t sees inputs <= t.
    direct = F.conv1d(F.pad(u, (36, 0)), k.flip(-1)[:, None], groups=3) + u * skip[:, None]
    torch.testing.assert_close(fft_causal_conv(u, k, skip), direct, atol=1e-5, rtol=1e-5)


def test_language_model_is_causal(one_thread):
    model = models.create_model("hyenadna_cpu", norm="layernorm").eval()
    tokens = _tokens(2, 64)
    changed = tokens.clone()
    changed[:, 40:] = _tokens(2, 24, seed=1)
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :40], b[:, :40], atol=1e-5, rtol=1e-5)
    assert (a[:, 40:] - b[:, 40:]).abs().max() > 1e-3  # later positions do see the change


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n if isinstance(n, str) else n["name"])
def test_every_norm_trains_forward_and_backward(norm, one_thread):
    model = models.create_model("hyenadna_cpu", norm=norm)
    logits = model(_tokens(2, 32))
    assert logits.shape == (2, 32, 16)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    pointwise = [name for name, m in model.named_modules() if getattr(m, "pointwise", False)]
    # Every norm site got the configured norm: 2 per block + the final one.
    assert len(pointwise) == (5 if isinstance(norm, dict) else 0)


def test_tiny_1k_is_the_released_size():
    # LongSafari/hyenadna-tiny-1k-seqlen; its parameter count: REFERENCE in tests/test_model_contract.py.
    with torch.device("meta"):
        ln = models.create_model("hyenadna_tiny_1k", norm="layernorm")
    assert (ln.d_model, ln.n_layer, ln.l_max) == (128, 2, 1026)


def test_longer_input_than_l_max_is_refused():
    model = models.create_model("hyenadna_cpu", norm="layernorm")
    with pytest.raises(ValueError, match=r"longer than this HyenaDNA allows \(l_max=258\)"):
        model(_tokens(1, 259))


def test_classifier_pools_only_real_tokens_and_loads_the_pretrained_backbone():
    torch.manual_seed(0)
    lm = models.create_model("hyenadna_cpu", norm="layernorm")
    clf = models.create_model("hyenadna_cpu", norm="layernorm", num_classes=3)
    state = clf.init_from_state_dict(lm.state_dict(), "dyt")
    assert state["head.weight"] is None and state["head.bias"] is None  # None: the new head keeps its init
    missing, unexpected = clf.load_state_dict({k: v for k, v in state.items() if v is not None}, strict=False)
    assert missing == ["head.weight", "head.bias"] and unexpected == []
    clf.eval()
    tokens = _tokens(1, 20)
    padded = torch.cat([tokens, torch.full((1, 5), PAD)], dim=1)
    # Causal model, padding on the right: the real positions' features are unchanged, and pooling skips pads.
    torch.testing.assert_close(clf(tokens), clf(padded), atol=1e-5, rtol=1e-5)


def test_no_weight_decay_names_the_implicit_filters():
    model = HyenaDNA(d_model=16, n_layer=1, l_max=32, filter_order=8)
    names = model.no_weight_decay()
    assert "layers.0.mixer.filter.mlp_in.weight" in names and "layers.0.mixer.filter.act.freq" in names
    assert not any("in_proj" in n for n in names)


def test_convert_replaces_every_norm():
    model = models.create_model("hyenadna_cpu", norm="layernorm")
    report = dyt.convert(model, to="dyt")
    assert report.total == 5
    assert set(report.by_site) == {"layers.norm1", "layers.norm2", "norm_f"}
