"""wav2vec 2.0 model: builds and trains with every norm, norm sites as the paper's patch sets them (conv
norms kept unless asked), masking and negatives as fairseq (its one init method, the weight-norm
magnitude included: tests/test_model_contract.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from dyt.nn import DyT, LayerNorm, get_norm_class, norm_names
from dyt.tasks.wav2vec2 import contrastive_loss
from models.wav2vec2_layers import num_frames, receptive_field, sample_mask, sample_negatives

TINY = {"conv_channels": 16, "embed_dim": 32, "num_heads": 2, "ffn_dim": 64, "final_dim": 16, "latent_vars": 8}


@pytest.mark.parametrize("norm", norm_names("channels_last"))
@pytest.mark.parametrize("large", [False, True])
def test_every_norm_trains_in_both_modes(norm, large):
    torch.manual_seed(0)
    mode = {"extractor_mode": "layer_norm", "layer_norm_first": True, "conv_bias": True} if large else {}
    # eager point-wise norms: the fused CPU kernel's one-off compile would dominate this test's time
    cfg = {"name": norm, **({"impl": "eager"} if getattr(get_norm_class(norm), "pointwise", False) else {})}
    model = models.create_model("wav2vec2_tiny", norm=cfg, **TINY, **mode)
    out = model(torch.randn(2, 4000))
    loss = contrastive_loss(out.logits) + out.diversity * out.num_masked + out.features_pen
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _site_types(model):
    enc = model.feature_extractor.conv_layers
    return type(enc[0].norm), type(enc[1].norm), type(model.post_extract_norm), type(model.encoder.norm)


def test_dyt_replaces_what_the_paper_patch_replaces_and_keeps_the_conv_norms():
    base = models.create_model("wav2vec2_tiny", norm="dyt", **TINY)
    assert _site_types(base) == (nn.GroupNorm, type(None), DyT, DyT)
    assert isinstance(base.encoder.layers[0].self_attn_layer_norm, DyT)
    assert isinstance(base.encoder.layers[0].final_layer_norm, DyT)
    large = models.create_model("wav2vec2_tiny", norm="dyt", extractor_mode="layer_norm", **TINY)
    assert all(isinstance(layer.norm, LayerNorm) for layer in large.feature_extractor.conv_layers)


def test_keep_norms_switches_sites_on_purpose():
    swapped = models.create_model("wav2vec2_tiny", norm="dyt", keep_norms=[], **TINY)
    assert _site_types(swapped)[:3] == (DyT, type(None), DyT)
    derf_like = models.create_model("wav2vec2_tiny", norm="dyt", keep_norms=["conv", "post_extract"], **TINY)
    assert _site_types(derf_like)[2] is LayerNorm
    with pytest.raises(ValueError, match="only conv, post_extract can keep"):
        models.create_model("wav2vec2_tiny", keep_norms=["attn"], **TINY)


def test_per_site_norm_options_reach_the_sites():
    cfg = {"name": "dyt", "sites": {"conv": {"alpha_init": 0.3}, "post_extract": {"alpha_init": 0.7}}}
    model = models.create_model("wav2vec2_tiny", norm=cfg, keep_norms=[], **TINY)
    assert model.feature_extractor.conv_layers[0].norm.alpha.item() == pytest.approx(0.3)
    assert model.post_extract_norm.alpha.item() == pytest.approx(0.7)


def test_wrap_units_are_the_encoder_layers():
    with torch.device("meta"):
        model = models.create_model("wav2vec2_tiny", norm="dyt", **TINY)
    assert model.wrap_units() == list(model.encoder.layers)


def test_receptive_field_and_frame_count():
    assert receptive_field() == 400 and num_frames(399) == 0 and num_frames(400) == 1
    assert num_frames(16000) == 49  # 20 ms frames


def test_span_mask_like_fairseq():
    torch.manual_seed(0)
    mask = sample_mask(8, 500, mask_prob=0.65, mask_length=10)
    counts = mask.sum(1)
    assert (counts == counts[0]).all()  # every row masks the same number of frames
    assert 0.4 < counts[0] / 500 < 0.6  # 0.65 of the frames start spans; overlaps leave ~half masked
    with pytest.raises(ValueError, match="cannot mask spans of 10 frames in 8 frames"):
        sample_mask(1, 8, 0.65, 10)


def test_negatives_come_from_other_masked_frames_of_the_same_utterance():
    torch.manual_seed(0)
    mask = sample_mask(3, 60, 0.65, 5)
    neg = sample_negatives(mask, 50)
    positives = mask.flatten().nonzero().squeeze(1)
    assert neg.shape == (len(positives), 50)
    assert (neg != positives[:, None]).all()
    assert mask.flatten()[neg].all()
    assert (neg // 60 == positives[:, None] // 60).all()


def test_layer_drop_skips_blocks_but_keeps_their_parameters_in_the_graph():
    torch.manual_seed(0)
    model = models.create_model("wav2vec2_tiny", layerdrop=1.0, **TINY).train()
    out = model(torch.randn(1, 4000))
    (contrastive_loss(out.logits) + out.projected_states.sum()).backward()
    for p in model.encoder.layers.parameters():
        assert p.grad is not None and not p.grad.any()
    model.eval()  # no layer drop in evaluation
    with torch.no_grad():
        x = torch.randn(1, 10, 32)
        assert not torch.equal(model.encoder(x), model.encoder.norm(x + model.encoder.pos_conv(x)))
