"""The normalization-free baselines of paper Table 9 (dyt/nn/normfree.py and the ViT and MAE options):
each method's defining property, checked on tiny layers, on a two-block ViT and on a tiny MAE (encoder
and decoder), and an MAE pretraining run whose encoder a fine-tuning ViT with the same options loads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from dyt.nn import NoNorm, SigmaReparamLinear, build_norm_factory
from dyt.nn.normfree import BranchScale, fixup_init_, sigma_reparam_
from dyt.tasks.mae import mae_loss
from models.mae import MaskedAutoencoder
from models.vit import vit_test  # the ViT family alone: create_model would import every family
from tests.test_mae import TINY as MAE_SIZES  # a tiny MAE: 16 patches of 8x8 pixels, two blocks each side

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


# ---- MAE: the same methods in encoder and decoder -------------------------------------------------------


def tiny_mae(**kwargs) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder("identity", **MAE_SIZES, **kwargs)


def stacks(model: MaskedAutoencoder) -> list[tuple[nn.ModuleList, int]]:
    """(blocks, width) of the encoder and of the decoder."""
    return [(model.blocks, MAE_SIZES["embed_dim"]), (model.decoder_blocks, MAE_SIZES["decoder_embed_dim"])]


@pytest.mark.usefixtures("one_thread")
def test_mae_skipinit_every_block_is_identity_at_init():
    model = tiny_mae(residual_init="skipinit")
    for blocks, width in stacks(model):
        x = torch.randn(2, 5, width)
        for block in blocks:
            assert isinstance(block.ls1, BranchScale) and block.ls1.scale.item() == 0 and block.ls2.scale.item() == 0
            assert torch.equal(block(x), x)
    imgs = torch.randn(2, 3, 32, 32)
    mae_loss(model, imgs, *model(imgs)).backward()
    # The decoder's scalars learn from the first step. The encoder's do not yet: the loss is on the masked
    # positions, which an identity decoder computes from the mask token alone (no attention to the kept ones).
    assert model.decoder_blocks[0].ls1.scale.grad.item() != 0 and model.blocks[0].ls1.scale.grad.item() == 0
    with torch.no_grad():
        model.decoder_blocks[0].ls1.scale.fill_(0.1)  # as after one update
    model.zero_grad()
    mae_loss(model, imgs, *model(imgs)).backward()
    assert model.blocks[0].ls1.scale.grad.item() != 0
    assert model.resolved_options()["residual_init"] == "skipinit"


def test_mae_fixup_rescales_each_stack_and_zeroes_the_output_layer():
    plain, fixup = tiny_mae(), tiny_mae(residual_init="fixup")
    for (p_blocks, width), (f_blocks, _) in zip(stacks(plain), stacks(fixup), strict=True):
        factor = (2 * len(f_blocks)) ** -0.5  # each stack: L = 2 * its depth branches of m = 2 layers
        x = torch.randn(2, 5, width)
        for p_block, f_block in zip(p_blocks, f_blocks, strict=True):
            for last in (f_block.attn.proj, f_block.mlp.fc2):
                assert not last.weight.any() and not last.bias.any()
            torch.testing.assert_close(f_block.attn.qkv.weight, p_block.attn.qkv.weight * factor)
            torch.testing.assert_close(f_block.mlp.fc1.weight, p_block.mlp.fc1.weight * factor)
            assert f_block.ls1.scale.item() == 1 and f_block.ls2.scale.item() == 1
            assert torch.equal(f_block(x), x)  # zeroed last layers: the block's output is its input
    assert not fixup.decoder_pred.weight.any() and not fixup.decoder_pred.bias.any()  # Fixup's zero classifier
    assert torch.equal(fixup.decoder_embed.weight, plain.decoder_embed.weight)  # the latent still gets through
    imgs = torch.randn(2, 3, 32, 32)
    pred, mask = fixup(imgs)
    loss = mae_loss(fixup, imgs, pred, mask)
    assert not pred.any() and torch.isfinite(loss)


@pytest.mark.usefixtures("one_thread")
def test_mae_sigma_reparam_spectral_norm_equals_gamma_in_encoder_and_decoder():
    model = tiny_mae(sigma_reparam=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # 4 per block in 2 + 2 blocks, decoder_embed and decoder_pred
    assert len(linears) == 4 * 4 + 2 and all(isinstance(m, SigmaReparamLinear) for m in linears)
    with torch.no_grad():
        for i, m in enumerate(linears):
            m.gamma.fill_(0.5 + 0.1 * i)
    for i, m in enumerate(linears):
        m.power_iteration(300)
        effective = torch.linalg.matrix_norm(m.effective_weight().detach(), ord=2).item()
        assert effective == pytest.approx(0.5 + 0.1 * i, rel=1e-3)
    assert model.resolved_options()["sigma_reparam"] is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"residual_init": "rezero"}, "valid choices are: fixup, skipinit"),
        ({"residual_init": "fixup", "sigma_reparam": True}, "use one of them"),
    ],
)
def test_mae_bad_options_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_mae(**kwargs)


@pytest.mark.parametrize("kwargs", [{"residual_init": "fixup"}, {"residual_init": "skipinit"}, {"sigma_reparam": True}])
def test_mae_meta_device_build_matches_eager(kwargs):
    eager = tiny_mae(**kwargs)
    with torch.device("meta"):
        meta = MaskedAutoencoder("identity", **MAE_SIZES, **kwargs)
    meta.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*meta.parameters(), *meta.buffers()]:
            t.fill_(math.nan)  # what reset_parameters() misses stays visible
    torch.manual_seed(0)
    meta.reset_parameters()
    for (name, a), b in zip(eager.state_dict().items(), meta.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["skipinit", "sigma_reparam"])
def test_mae_pretraining_run_loads_into_the_finetuning_vit(method, tmp_path):
    """norm=normfree/<method> gives the MAE and the fine-tuning ViT the same options: three pretraining
    steps of the digits MAE (the first at warm-up's lr 0; under SkipInit the encoder's scalars move from
    the third, see above), then the fine-tuning recipe's init_from loads every encoder weight strictly
    (only the fresh head is left out), the trained SkipInit scalars and sigma-Reparam gammas included."""
    from dyt.engine import Trainer, load_checkpoint
    from dyt.tasks import build_task
    from dyt.weights import load_init_weights

    def config(*overrides):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            return compose("train", overrides=[f"norm=normfree/{method}", "trainer.device=cpu", *overrides])

    run = tmp_path / "pretrain"
    pretrain = config("experiment=mae_digits", f"run_dir={run}", "trainer.max_steps=3", "trainer.progress=off")
    Trainer(pretrain).fit(build_task(pretrain))
    trained = load_checkpoint(run)["model"]

    finetune = config("experiment=mae_digits_finetune", f"init_from.source={run}")
    vit = build_task(finetune).build_model()
    assert vit.resolved_options()["residual_init" if method == "skipinit" else "sigma_reparam"] in ("skipinit", True)
    report = load_init_weights(vit, finetune.init_from)  # raises on any missing or unexpected key
    head = ["head.bias", "head.weight"] + (["head.gamma", "head.u", "head.v"] if method == "sigma_reparam" else [])
    assert report.fresh == {"ignore": sorted(head)}
    own = vit.state_dict()
    assert report.loaded == len(own) - len(head)
    for key in own.keys() - set(head):
        assert torch.equal(own[key], trained[key]), key
    learned = "blocks.0.ls1.scale" if method == "skipinit" else "blocks.0.attn.qkv.gamma"
    assert trained[learned].item() != (0.0 if method == "skipinit" else 1.0)  # trained, then loaded
