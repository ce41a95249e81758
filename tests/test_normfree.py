"""The normalization-free baselines of paper Table 9 (dyt/nn/normfree.py and the ViT options): each
method's defining property, checked on tiny layers and on a two-block ViT."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dyt.nn import NoNorm, SigmaReparamLinear, build_norm_factory
from dyt.nn.normfree import fixup_init_, sigma_reparam_
from models.vit import vit_test  # the ViT family alone: create_model would import every family


def tiny_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return vit_test(norm="identity", **kwargs)


def test_identity_norm_drops_hints_and_passes_through():
    layer = build_norm_factory("identity")(8, site="attn", eps=1e-6, alpha_init=0.5)
    x = torch.randn(2, 3, 8)
    assert isinstance(layer, NoNorm) and torch.equal(layer(x), x)


def test_sigma_reparam_spectral_norm_equals_gamma():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(24, 40)
    with torch.no_grad():
        layer.gamma.fill_(2.5)
    layer.power_iteration(200)  # converge (one step per training forward does this over training)
    true = torch.linalg.matrix_norm(layer.weight, ord=2)
    assert layer.sigma().item() == pytest.approx(true.item(), rel=1e-4)
    effective = torch.linalg.matrix_norm(layer.effective_weight().detach(), ord=2)
    assert effective.item() == pytest.approx(2.5, rel=1e-3)


def test_sigma_reparam_tracks_weight_changes_one_step_per_training_forward():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(16, 16)
    with torch.no_grad():
        layer.weight.mul_(3.0)  # sigma triples; the buffers still point along the top singular vectors
    u_before = layer.u.clone()
    layer.eval()
    layer(torch.randn(4, 16))
    assert torch.equal(layer.u, u_before)  # no power iteration in eval
    layer.train()
    for _ in range(200):
        out = layer(torch.randn(4, 16))
    out.sum().backward()
    assert layer.gamma.grad is not None and layer.weight.grad is not None
    effective = torch.linalg.matrix_norm(layer.effective_weight().detach(), ord=2)
    assert effective.item() == pytest.approx(1.0, rel=1e-3)


def test_sigma_reparam_replaces_every_linear_of_the_vit():
    model = tiny_vit(sigma_reparam=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 4 + 1 and all(isinstance(m, SigmaReparamLinear) for m in linears)
    for m in linears:  # every layer starts at spectral norm gamma = 1 (after the estimate converges)
        m.power_iteration(300)
        assert torch.linalg.matrix_norm(m.effective_weight().detach(), ord=2).item() == pytest.approx(1.0, rel=1e-3)
    assert "blocks.0.attn.qkv.gamma" in model.state_dict()
    assert sigma_reparam_(nn.Sequential(nn.Conv2d(1, 1, 1)))[0].__class__ is nn.Conv2d


def test_skipinit_block_is_identity_at_init():
    model = tiny_vit(residual_init="skipinit")
    x = torch.randn(2, 17, 32)
    for block in model.blocks:
        assert block.ls1.scale.item() == 0 and block.ls2.scale.item() == 0
        assert torch.equal(block(x), x)
    loss = model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert model.blocks[0].ls1.scale.grad.abs().item() > 0  # the scalars learn from the first step


def test_fixup_init_rules():
    plain, fixup = tiny_vit(), tiny_vit(residual_init="fixup")
    factor = (2 * len(fixup.blocks)) ** -0.5  # L = 2 * depth branches of m = 2 layers: L ** (-1 / (2m - 2))
    for p_block, f_block in zip(plain.blocks, fixup.blocks, strict=True):
        for last in (f_block.attn.proj, f_block.mlp.fc2):
            assert not last.weight.any() and not last.bias.any()
        torch.testing.assert_close(f_block.attn.qkv.weight, p_block.attn.qkv.weight * factor)
        torch.testing.assert_close(f_block.mlp.fc1.weight, p_block.mlp.fc1.weight * factor)
        assert f_block.ls1.scale.item() == 1 and f_block.ls2.scale.item() == 1
    assert not fixup.head.weight.any()
    x = torch.randn(2, 17, 32)
    assert torch.equal(fixup.blocks[0](x), x)  # zeroed last layers: every block starts as the identity


def test_fixup_needs_two_layers_per_branch():
    with pytest.raises(ValueError, match="at least 2 weight layers"):
        fixup_init_([[nn.Linear(2, 2)]])
    assert math.isclose(8 ** (-1 / 4), 8 ** (-1.0 / (2 * 3 - 2)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"residual_init": "rezero"}, "valid choices are: fixup, skipinit"),
        ({"residual_init": "skipinit", "init_values": 1e-4}, "set init_values=None"),
        ({"residual_init": "fixup", "sigma_reparam": True}, "use one of them"),
    ],
)
def test_bad_options_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_vit(**kwargs)


def test_meta_device_build_matches_eager():
    eager = tiny_vit(sigma_reparam=True)
    with torch.device("meta"):
        meta = vit_test(norm="identity", sigma_reparam=True)
    meta.to_empty(device="cpu")
    torch.manual_seed(0)
    meta.reset_parameters()
    for (name, a), b in zip(eager.state_dict().items(), meta.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
