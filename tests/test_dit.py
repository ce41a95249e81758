"""DiT model: shapes, adaLN-Zero behaviour per norm, and DiT's reference math (the paper's parameter
counts: REFERENCE in tests/test_model_contract.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import dit


def eager(norm):
    """Point-wise norms in plain PyTorch: the fused CPU kernel's first compile would dominate test time."""
    return {"name": norm, "impl": "eager"} if norm in ("dyt", "derf") else norm


def tiny(norm="layernorm", **kw):
    torch.manual_seed(0)
    return dit.dit_tiny(norm=eager(norm), **kw)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "dyt", "derf"])
def test_forward_shape_and_backward(norm):
    model = tiny(norm)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([0, 4, 9])
    out = model(x, t, y)
    assert out.shape == (3, 2, 8, 8)  # learned sigma doubles the channels
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert dit.dit_tiny(norm=eager(norm), learn_sigma=False)(x, t, y).shape == (3, 1, 8, 8)


def _adaln_zeroed(model):
    layers = [b.adaLN_modulation[-1] for b in model.blocks]
    layers += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    return [bool((m.weight == 0).all() and (m.bias == 0).all()) for m in layers]


@pytest.mark.parametrize("norm,zeroed", [("layernorm", True), ("rmsnorm", True), ("dyt", False), ("derf", False)])
def test_zero_init_adaln_auto_follows_pointwise(norm, zeroed):
    assert set(_adaln_zeroed(tiny(norm))) == {zeroed}


def test_zero_init_adaln_explicit_overrides():
    assert set(_adaln_zeroed(tiny("dyt", zero_init_adaln=True))) == {True}
    assert set(_adaln_zeroed(tiny("layernorm", zero_init_adaln=False))) == {False}
    with pytest.raises(ValueError, match="zero_init_adaln"):
        tiny("layernorm", zero_init_adaln="yes")


def test_adaln_zero_block_is_identity_at_init():
    model = tiny("layernorm")
    x, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    assert torch.equal(model.blocks[0](x, c), x)
    assert torch.equal(
        model(torch.randn(2, 1, 8, 8), torch.tensor([3, 7]), torch.tensor([1, 2])), torch.zeros(2, 2, 8, 8)
    )


def test_norm_sites_are_affine_free_with_dit_eps():
    model = tiny("layernorm")
    norms = [model.blocks[0].norm1, model.blocks[0].norm2, model.final_layer.norm_final]
    assert all(n.weight is None and n.eps == 1e-6 for n in norms)
    dyt_model = tiny("dyt")
    assert [n for n, _ in dyt_model.blocks[0].norm1.named_parameters()] == ["alpha"]


def _dit_pos_embed_reference(dim, grid):
    """DiT's get_2d_sincos_pos_embed, restated in numpy."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # (w, h) first
    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)


def test_pos_embed_matches_dit_reference():
    got = dit.sincos_pos_embed_2d(64, 4).numpy()
    np.testing.assert_allclose(got, _dit_pos_embed_reference(64, 4), atol=1e-6)


def test_forward_matches_dit_reference_math():
    """Forward pass restated from DiT's equations with explicit LayerNorm, on non-zero adaLN weights."""
    torch.manual_seed(1)
    model = tiny("layernorm", zero_init_adaln=False).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 900]), torch.tensor([3, 10])  # 10: the null class
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    temb = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1)
    c = model.t_embedder.mlp(temb) + model.y_embedder.embedding_table.weight[y]
    h = F.conv2d(x, model.x_embedder.weight, model.x_embedder.bias, stride=2).flatten(2).transpose(1, 2)
    h = h + model.pos_embed
    ln = lambda v: F.layer_norm(v, v.shape[-1:], eps=1e-6)
    for b in model.blocks:
        mod = b.adaLN_modulation[1](F.silu(c)).chunk(6, dim=1)
        a = ln(h) * (1 + mod[1][:, None]) + mod[0][:, None]
        q, k, v = b.attn.qkv(a).reshape(2, 16, 3, 4, 16).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1) @ v
        h = h + mod[2][:, None] * b.attn.proj(att.transpose(1, 2).reshape(2, 16, 64))
        m = ln(h) * (1 + mod[4][:, None]) + mod[3][:, None]
        h = h + mod[5][:, None] * b.mlp.fc2(F.gelu(b.mlp.fc1(m), approximate="tanh"))
    shift, scale = model.final_layer.adaLN_modulation[1](F.silu(c)).chunk(2, dim=1)
    out = model.final_layer.linear(ln(h) * (1 + scale[:, None]) + shift[:, None])  # (N, 16, 2*2*2)
    out = out.reshape(2, 4, 4, 2, 2, 2).permute(0, 5, 1, 3, 2, 4).reshape(2, 2, 8, 8)
    torch.testing.assert_close(model(x, t, y), out, atol=1e-5, rtol=1e-5)


def test_label_dropout_only_in_training():
    model = tiny("layernorm", class_dropout_prob=1.0)
    labels = torch.tensor([0, 5])
    null = model.y_embedder.embedding_table.weight[10]
    model.train()
    assert torch.equal(model.y_embedder(labels), null.expand(2, -1))
    model.eval()
    assert torch.equal(model.y_embedder(labels), model.y_embedder.embedding_table.weight[labels])


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        dit.DiT(input_size=10, patch_size=4, hidden_size=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        dit.DiT(input_size=8, patch_size=2, hidden_size=36, depth=1, num_heads=5)


def test_matches_diffusers_dit_with_mapped_weights():
    """Parity with diffusers' DiTTransformer2DModel. diffusers gives every block its own copy of the
    timestep/class embedder, so ours is copied into each; and its timestep
    frequencies divide by ``half - 1`` (``downscale_freq_shift=1``) where DiT divides by ``half``, so the
    test sets that shift to 0, i.e. to DiT's formula."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ours = dit.DiT(
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        zero_init_adaln=False,
        norm="layernorm",
    ).eval()
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_eps=1e-6,
    ).eval()
    pairs = [
        (ref.pos_embed.proj, ours.x_embedder),
        (ref.proj_out_1, ours.final_layer.adaLN_modulation[1]),
        (ref.proj_out_2, ours.final_layer.linear),
    ]
    for rb, b in zip(ref.transformer_blocks, ours.blocks):
        emb = rb.norm1.emb
        emb.time_proj.downscale_freq_shift = 0
        pairs += [
            (emb.timestep_embedder.linear_1, ours.t_embedder.mlp[0]),
            (emb.timestep_embedder.linear_2, ours.t_embedder.mlp[2]),
            (emb.class_embedder.embedding_table, ours.y_embedder.embedding_table),
            (rb.norm1.linear, b.adaLN_modulation[1]),
            (rb.attn1.to_out[0], b.attn.proj),
            (rb.ff.net[0].proj, b.mlp.fc1),
            (rb.ff.net[2], b.mlp.fc2),
        ]
        for part, w, bias in zip(
            (rb.attn1.to_q, rb.attn1.to_k, rb.attn1.to_v), b.attn.qkv.weight.chunk(3), b.attn.qkv.bias.chunk(3)
        ):
            part.load_state_dict({"weight": w, "bias": bias})
    for target, source in pairs:
        target.load_state_dict(source.state_dict())
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 801]), torch.tensor([7, 10])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, y), ref(x, timestep=t, class_labels=y).sample, atol=1e-5, rtol=1e-5)
