"""wav2vec 2.0 with norm=layernorm equals Hugging Face Wav2Vec2ForPreTraining given the same weights, mask,
negatives and Gumbel noise, in every encoder layout (Base: GroupNorm conv + post-norm; Large: LayerNorm
conv + pre-norm; paper Table 5's Large: GroupNorm conv + pre-norm), and weights convert both ways;
parameter counts of the presets equal Hugging Face's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

import models
from dyt.tasks.wav2vec2 import contrastive_loss
from models.wav2vec2 import Wav2Vec2
from models.wav2vec2_hf import from_hf_state_dict, hf_config, to_hf_state_dict
from models.wav2vec2_layers import sample_mask, sample_negatives

SMALL = {
    "conv_channels": 32,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "ffn_dim": 64,
    "final_dim": 16,
    "latent_vars": 8,
    "pos_conv_kernel": 16,
    "pos_conv_groups": 4,
    "num_negatives": 5,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "layerdrop": 0.0,
}
MODES = {
    "base": {"extractor_mode": "default", "conv_bias": False, "layer_norm_first": False},
    "large": {"extractor_mode": "layer_norm", "conv_bias": True, "layer_norm_first": True},
    # paper Table 5's Large (the authors' wav2vec2_large_librispeech.yaml): fairseq's default extractor (one
    # GroupNorm, no conv bias) under a pre-norm Transformer; Hugging Face: feat_extract_norm "group" with
    # do_stable_layer_norm
    "large_librispeech": {"extractor_mode": "default", "conv_bias": False, "layer_norm_first": True},
}
HF_NO_DROPOUT = {
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "feat_quantizer_dropout": 0.0,
    "final_dropout": 0.0,
    "layerdrop": 0.0,
}


def _fixed_gumbel(logits, tau=1.0, hard=False, dim=-1):
    """Straight-through hard Gumbel softmax with noise that depends only on the shape, so both models draw
    the same codes."""
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(7), dtype=logits.dtype)
    y = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=dim)
    onehot = F.one_hot(y.argmax(dim), y.shape[dim]).to(y.dtype)
    return onehot - y.detach() + y


@pytest.fixture
def fixed_gumbel(monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", _fixed_gumbel)


@pytest.mark.parametrize("mode", list(MODES))
def test_matches_hugging_face(mode, fixed_gumbel):
    torch.manual_seed(0)
    ours = Wav2Vec2("layernorm", **SMALL, **MODES[mode]).train()
    hf = Wav2Vec2ForPreTraining(hf_config(ours, **HF_NO_DROPOUT)).train()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    ours.load_state_dict(from_hf_state_dict(hf.state_dict()))
    # and back: our weights under HF names are exactly HF's tensors
    back = to_hf_state_dict(ours.state_dict())
    assert back.keys() == hf.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in hf.state_dict().items())

    audio = torch.randn(2, 8000)
    np.random.seed(0)
    frames = int(hf._get_feat_extract_output_lengths(8000))
    mask = _compute_mask_indices((2, frames), mask_prob=0.5, mask_length=3, min_masks=2)
    negatives = _sample_negative_indices((2, frames), SMALL["num_negatives"], mask)
    mask, negatives = torch.from_numpy(mask), torch.from_numpy(negatives).long()

    ref = hf(audio, mask_time_indices=mask, sampled_negative_indices=negatives)
    out = ours(audio, mask=mask, negatives=negatives[mask], temperature=2.0)

    num_masked = int(mask.sum())
    ref_logits = ref_logits_rows(hf, audio, mask, negatives)
    assert out.logits.shape == ref_logits.shape == (num_masked, 1 + SMALL["num_negatives"])
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(contrastive_loss(out.logits), ref.contrastive_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.diversity * num_masked, ref.diversity_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.projected_states, ref.projected_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.projected_quantized_states, ref.projected_quantized_states, atol=1e-5, rtol=1e-5)


def test_hugging_face_checkpoint_with_legacy_weight_norm_names_loads():
    """Hub checkpoints store the position conv's weight norm as weight_g / weight_v."""
    torch.manual_seed(0)
    ours = Wav2Vec2("layernorm", **SMALL, **MODES["base"])
    hf_state = Wav2Vec2ForPreTraining(hf_config(ours, **HF_NO_DROPOUT)).state_dict()
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in hf_state.items()
    }
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in legacy
    ours.load_state_dict(ours.init_from_state_dict(legacy, "huggingface"))
    assert torch.equal(ours.encoder.pos_conv.conv.parametrizations.weight.original1,
                       hf_state["wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"])  # fmt: skip


def ref_logits_rows(hf, audio, mask, negatives) -> torch.Tensor:
    """HF's contrastive logits of the masked frames in (utterance, frame) order, rebuilt from its outputs
    exactly as its forward does (it returns only the summed loss)."""
    ref = hf(audio, mask_time_indices=mask, sampled_negative_indices=negatives)
    q, c = ref.projected_quantized_states, ref.projected_states
    B, T, D = q.shape
    neg = q.reshape(-1, D)[negatives.view(-1)].view(B, T, -1, D).permute(2, 0, 1, 3)
    logits = hf.compute_contrastive_logits(q[None], neg, c, hf.config.contrastive_logits_temperature)
    logits[1:][(q == neg).all(-1)] = float("-inf")
    return logits.permute(1, 2, 0)[mask]


def test_eval_mode_uses_argmax_codes_and_matches():
    """In evaluation both take the argmax code, so the contrastive loss matches with no noise to share;
    the mask and negatives come from our samplers here."""
    torch.manual_seed(1)
    ours = Wav2Vec2("layernorm", **SMALL, **MODES["base"]).eval()
    hf = Wav2Vec2ForPreTraining(hf_config(ours, **HF_NO_DROPOUT)).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict()))
    audio = torch.randn(2, 6000)
    mask = sample_mask(2, int(hf._get_feat_extract_output_lengths(6000)), 0.5, 3)
    negatives = sample_negatives(mask, SMALL["num_negatives"])
    hf_negatives = torch.zeros(*mask.shape, SMALL["num_negatives"], dtype=torch.long)
    hf_negatives[mask] = negatives
    with torch.no_grad():
        out = ours(audio, mask=mask, negatives=negatives)
        ref = hf(audio, mask_time_indices=mask, sampled_negative_indices=hf_negatives)
    torch.testing.assert_close(contrastive_loss(out.logits), ref.contrastive_loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name, hf_kwargs",
    [
        ("wav2vec2_base", {}),
        (
            "wav2vec2_large",
            {
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "intermediate_size": 4096,
                "feat_extract_norm": "layer",
                "do_stable_layer_norm": True,
                "conv_bias": True,
                "codevector_dim": 768,
                "proj_codevector_dim": 768,
            },
        ),
    ],
)
def test_preset_parameter_counts_equal_hugging_face(name, hf_kwargs):
    """Base 95.0M and Large 317.4M (HF facebook/wav2vec2-base and -large-lv60 configs, pretraining heads)."""
    with torch.device("meta"):
        ours = models.create_model(name)
        hf = Wav2Vec2ForPreTraining(Wav2Vec2Config(**hf_kwargs))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf.parameters())
    assert count == {"wav2vec2_base": 95_044_608, "wav2vec2_large": 317_390_592}[name]
