"""MAE (models/mae.py): parity with Hugging Face ViTMAEForPreTraining, every norm, sizes.

Specification:
- with ``norm=layernorm``, the same weights and the same noise, mask, loss and reconstruction equal
  ``ViTMAEForPreTraining`` within 1e-5 (fp32), with and without ``norm_pix_loss``; weights convert
  both ways without loss;
- the fixed position tables are MAE's (= Hugging Face's, column half first);
- mae_vit_b / mae_vit_l have Hugging Face's parameter count (ours keeps the fixed tables as buffers);
- every norm builds the digits preset, which trains (forward + backward), with the six documented sites;
- masking removes ``L - int(L * (1 - mask_ratio))`` patches per image, the same ones for the same noise.
"""

from __future__ import annotations

import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

import models
from dyt.nn import DyT, norm_names
from models.mae import MaskedAutoencoder, mae_from_hf, mae_to_hf, sincos_pos_embed
from tests.test_vision_models import plain

TINY = dict(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=2,
    decoder_num_heads=2,
)


def hf_config(norm_pix_loss: bool, **sizes) -> ViTMAEConfig:
    s = {**TINY, **sizes}
    return ViTMAEConfig(
        image_size=s["img_size"],
        patch_size=s["patch_size"],
        num_channels=3,
        hidden_size=s["embed_dim"],
        num_hidden_layers=s["depth"],
        num_attention_heads=s["num_heads"],
        intermediate_size=4 * s["embed_dim"],
        decoder_hidden_size=s["decoder_embed_dim"],
        decoder_num_hidden_layers=s["decoder_depth"],
        decoder_num_attention_heads=s["decoder_num_heads"],
        decoder_intermediate_size=4 * s["decoder_embed_dim"],
        layer_norm_eps=1e-6,  # MAE's (timm's) eps; Hugging Face's default is 1e-12
        mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss,
    )


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_equals_hugging_face_vitmae_with_the_same_weights_and_noise(norm_pix_loss):
    torch.manual_seed(0)
    ours = MaskedAutoencoder("layernorm", norm_pix_loss=norm_pix_loss, **TINY).eval()
    theirs = ViTMAEForPreTraining(hf_config(norm_pix_loss)).eval()
    theirs.load_state_dict(mae_to_hf(ours.state_dict()), strict=True)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    loss, pred, mask = ours(imgs, noise=noise)
    out = theirs(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask)
    assert torch.allclose(pred, out.logits, atol=1e-5, rtol=0)
    assert abs(loss.item() - out.loss.item()) < 1e-5


def test_weights_convert_both_ways():
    ours = MaskedAutoencoder("layernorm", **TINY)
    back = mae_from_hf(mae_to_hf(ours.state_dict()))
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    # and a Hugging Face model's own weights load into ours strictly
    theirs = ViTMAEForPreTraining(hf_config(True))
    ours.load_state_dict(mae_from_hf(theirs.state_dict()), strict=True)


def test_dyt_weights_refuse_to_convert_to_hugging_face():
    with pytest.raises(KeyError, match="alpha.*only norm=layernorm"):
        mae_to_hf(MaskedAutoencoder({"name": "dyt", "impl": "eager"}, **TINY).state_dict())


def test_position_tables_are_maes():
    table = build_2d_sinusoidal_position_embedding(4, 4, 32, cls_token=True)
    mae_layout = torch.cat([table[:, 16:], table[:, :16]], dim=1)  # MAE's checkpoints: column half first
    assert torch.allclose(sincos_pos_embed(32, 4)[0], mae_layout, atol=1e-7)


@pytest.mark.parametrize(
    ("preset", "sizes"),
    [
        ("mae_vit_b", dict(embed_dim=768, depth=12, num_heads=12)),
        ("mae_vit_l", dict(embed_dim=1024, depth=24, num_heads=16)),
    ],
)
def test_preset_sizes_equal_hugging_face(preset, sizes):
    mae_sizes = dict(img_size=224, patch_size=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
    with torch.device("meta"):
        ours = models.create_model(preset, norm="layernorm")
        theirs = ViTMAEForPreTraining(hf_config(True, **mae_sizes, **sizes))
    n_ours = sum(t.numel() for t in [*ours.parameters(), *ours.buffers()])
    assert n_ours == sum(p.numel() for p in theirs.parameters())
    assert ours.mask_ratio == 0.75 and ours.norm_pix_loss


@pytest.mark.parametrize("norm", norm_names())
def test_every_norm_builds_and_trains(norm):
    model = models.create_model("mae_vit_digits", norm=plain(norm))
    loss, pred, mask = model(torch.randn(4, 1, 8, 8))
    loss.backward()
    assert pred.shape == (4, 16, 4) and mask.shape == (4, 16)
    assert torch.isfinite(loss) and model.cls_token.grad is not None


def test_norm_sites_are_named_for_encoder_and_decoder():
    decoder = {f"decoder_{s}": {"alpha_init": 0.5 + 0.1 * i} for i, s in enumerate(["attn", "ffn", "final"])}
    cfg = {"name": "dyt", "impl": "eager", "sites": {"attn": {"alpha_init": 0.1}, **decoder}}
    model = models.create_model("mae_vit_digits", norm=cfg)
    assert isinstance(model.norm, DyT)
    assert model.blocks[0].norm1.alpha.item() == pytest.approx(0.1)
    assert model.decoder_blocks[1].norm1.alpha.item() == pytest.approx(0.5)
    assert model.decoder_blocks[0].norm2.alpha.item() == pytest.approx(0.6)
    assert model.decoder_norm.alpha.item() == pytest.approx(0.7)
    n_dyt = sum(isinstance(m, DyT) for m in model.modules())
    assert n_dyt == 2 * len(model.blocks) + 1 + 2 * len(model.decoder_blocks) + 1
    with pytest.raises(ValueError, match="decoder_typo"):
        models.create_model("mae_vit_digits", norm={"name": "dyt", "sites": {"decoder_typo": {}}})


def test_masking_keeps_a_quarter_and_follows_the_noise():
    model = models.create_model("mae_vit_digits", norm="layernorm")
    noise = torch.rand(5, 16)
    _, _, mask = model(torch.randn(5, 1, 8, 8), noise=noise)
    assert (mask.sum(1) == 16 - int(16 * 0.25)).all()
    # the removed patches are those with the largest noise
    assert torch.equal(mask.bool(), noise >= noise.sort(dim=1).values[:, 4:5])
    assert torch.equal(model.unpatchify(model.patchify(x := torch.randn(2, 1, 8, 8))), x)


def test_builds_on_meta_and_resets_deterministically():
    with torch.device("meta"):
        a, b = (models.create_model("mae_vit_digits", norm="dyt") for _ in range(2))
    for model in (a, b):
        model.to_empty(device="cpu")
        torch.manual_seed(3)
        with torch.no_grad():
            model.reset_parameters()
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y) and torch.isfinite(x).all(), name
    assert torch.equal(a.pos_embed, sincos_pos_embed(64, 4))
