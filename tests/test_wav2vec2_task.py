"""wav2vec 2.0 task: the loss is fairseq's (hand computation), the temperature schedule is fairseq's, and
val/loss is reported as fairseq does (summed over batches, divided by the masked frames, in bits)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import models
from dyt.tasks import build_task
from dyt.tasks.wav2vec2 import correct_count, pretraining_loss
from models.wav2vec2_layers import num_frames, sample_mask, sample_negatives

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {"conv_channels": 16, "embed_dim": 32, "num_heads": 2, "ffn_dim": 64, "final_dim": 16, "latent_vars": 8}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("train", overrides=list(overrides))


def _hand_loss(model, audio, mask, negatives, div_w, pen_w):
    """The fairseq criterion written out from the model's pieces, without the model's loss code."""
    feats = model.feature_extractor(audio).transpose(1, 2)
    pen = (feats**2).sum() / feats.numel()
    normed = model.post_extract_norm(feats)
    x = model.post_extract_proj(normed)
    x = torch.where(mask[..., None], model.mask_emb, x)
    c = model.final_proj(model.encoder(x))[mask]  # (M, D)
    # quantizer in eval mode: argmax code per group, soft perplexity over the masked frames
    q = model.quantizer
    logits_q = q.weight_proj(normed).view(-1, q.groups, q.num_vars)
    codes = logits_q.argmax(-1)
    book = q.codevectors.view(q.groups, q.num_vars, -1)
    quantized = torch.cat([book[g][codes[:, g]] for g in range(q.groups)], dim=-1)
    targets = model.project_q(quantized)
    pos = targets[mask.flatten()]
    cand = torch.cat([pos[:, None], targets[negatives]], dim=1)
    sims = torch.stack([torch.nn.functional.cosine_similarity(c, cand[:, k], dim=-1) for k in range(cand.shape[1])], 1)
    sims = sims / model.logit_temp
    # fairseq: a distractor with the target's own code is no distractor (its logit becomes -inf)
    sims[:, 1:][(cand[:, 1:] == pos[:, None]).all(-1)] = float("-inf")
    ce = -(sims[:, 0] - torch.logsumexp(sims, dim=1)).sum()
    probs = torch.softmax(logits_q[mask.flatten()], -1).mean(0)  # (groups, vars)
    perplexity = sum(math.exp(-(p * p.log()).sum().item()) for p in probs)
    num_codes = q.groups * q.num_vars
    m = int(mask.sum())
    return ce.item() + m * (div_w * (num_codes - perplexity) / num_codes + pen_w * pen.item()), m


def test_loss_is_fairseqs_criterion_by_hand():
    torch.manual_seed(0)
    model = models.create_model("wav2vec2_tiny", **TINY).eval()
    audio = torch.randn(2, 6000)
    mask = sample_mask(2, num_frames(6000), model.mask_prob, model.mask_length)
    negatives = sample_negatives(mask, model.num_negatives)
    with torch.no_grad():
        out = model(audio, mask=mask, negatives=negatives)
        expected, m = _hand_loss(model, audio, mask, negatives, 0.1, 10.0)
    loss_sum, sample_size = pretraining_loss(out, diversity_weight=0.1, feature_penalty_weight=10.0)
    assert sample_size == m == int(mask.sum())
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)


def test_quantizer_temperature_is_fairseqs_exponential_decay_with_a_floor():
    """fairseq: max(start * decay ** update, end); Base (2, 0.5, 0.999995), Large (2, 0.1, 0.999995)."""
    task = build_task(_compose("experiment=paper/wav2vec2_base"))
    base = task.schedules(total_steps=400_000, steps_per_epoch=1000)["quantizer_temp"]
    assert base(0) == 2.0
    assert base(100_000) == pytest.approx(2.0 * 0.999995**100_000)  # 1.213
    assert base(400_000) == 0.5  # Base reaches its floor at ~277k updates


def test_accuracy_counts_argmax_on_target_but_not_ties():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    assert correct_count(logits) == 1
