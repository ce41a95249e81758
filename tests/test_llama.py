"""LLaMA-2 (models/llama.py): Hugging Face parity, paper-size parameter counts, the DyT recipe quirks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import LlamaForCausalLM

import models
from dyt.engine.sampler import plan_batch
from models.llama import Llama, alpha_init_for_width
from models.llama_hf import from_hf_state_dict, hf_config, to_hf_state_dict

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
PAPER_SIZES = ("llama2_7b", "llama2_13b", "llama2_34b", "llama2_70b")
SMALL = dict(n_layers=2, vocab_size=320, multiple_of=32)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_rmsnorm_logits_equal_hugging_face(n_kv_heads):
    torch.manual_seed(0)
    ours = Llama(dim=64, n_heads=4, n_kv_heads=n_kv_heads, norm="rmsnorm", **SMALL).eval()
    with torch.no_grad():  # non-trivial norm weights so that a mis-mapped norm shows
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    hf = LlamaForCausalLM(hf_config(ours)).eval()
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()))
    tokens = torch.randint(0, SMALL["vocab_size"], (2, 33))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= 1e-5


def test_state_dict_converts_both_ways():
    hf = LlamaForCausalLM(hf_config(Llama(dim=64, n_heads=4, n_kv_heads=2, norm="rmsnorm", **SMALL)))
    ours = Llama(dim=64, n_heads=4, n_kv_heads=2, norm="rmsnorm", **SMALL)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict()))
    back = to_hf_state_dict(ours.state_dict())
    reference = {k: v for k, v in hf.state_dict().items() if "rotary" not in k}
    assert back.keys() == reference.keys()
    assert all(torch.equal(back[k], reference[k]) for k in reference)


def test_dyt_model_does_not_convert_to_hugging_face():
    with pytest.raises(ValueError, match=r"alpha.*format='dyt'"):
        to_hf_state_dict(Llama(dim=64, n_heads=4, norm="dyt", **SMALL).state_dict())


@pytest.mark.parametrize("name", PAPER_SIZES)
def test_paper_sizes_build_on_meta_with_hugging_face_parameter_counts(name):
    with torch.device("meta"):
        ours = models.create_model(name, norm="rmsnorm")
        hf = LlamaForCausalLM(hf_config(ours))
    assert _params(ours) == _params(hf)


def test_paper_sizes_are_the_fms_fsdp_shapes():
    expected = {
        "llama2_7b": (4096, 32, 32, 32, 11008),
        "llama2_13b": (5120, 40, 40, 40, 13824),
        "llama2_34b": (8192, 48, 64, 8, 22016),
        "llama2_70b": (8192, 80, 64, 8, 28672),
    }
    for name, shape in expected.items():
        with torch.device("meta"):
            m = models.create_model(name, norm="rmsnorm")
        assert (m.dim, len(m.layers), m.n_heads, m.n_kv_heads, m.hidden_dim, m.vocab_size) == (*shape, 32000)


@pytest.mark.parametrize(
    "width, expected",
    [
        (1024, (1.0, 1.0)),
        (2048, (1.0, 0.5)),
        (4096, (0.8, 0.2)),
        (5120, (0.6, 0.15)),
        (8192, (0.2, 0.05)),
        (256, (1.0, 1.0)),
        (3072, (1.0, 0.5)),
        (16384, (0.2, 0.05)),
    ],
)
def test_alpha_init_by_width_follows_table_11(width, expected):
    assert alpha_init_for_width(width) == expected


def test_dyt_sites_take_attention_and_other_alpha_without_bias():
    with torch.device("meta"):
        m = models.create_model("llama2_13b", norm="dyt")
    block = m.layers[0]
    assert (block.attention_norm.alpha_init, block.ffn_norm.alpha_init, m.norm.alpha_init) == (0.6, 0.15, 0.15)
    assert all(n.bias is None for n in (block.attention_norm, block.ffn_norm, m.norm))


def test_config_alpha_overrides_the_width_default():
    norm = {"name": "dyt", "alpha_init": 0.3, "sites": {"attn": {"alpha_init": 0.9}}}
    m = models.create_model("llama_tiny", norm=norm)
    assert (
        m.layers[1].attention_norm.alpha.item(),
        m.layers[1].ffn_norm.alpha.item(),
        m.norm.alpha.item(),
    ) == pytest.approx((0.9, 0.3, 0.3))


@pytest.mark.parametrize("norm, scaled", [("dyt", True), ("derf", True), ("rmsnorm", False), ("layernorm", False)])
def test_embed_scale_auto_is_sqrt_d_for_pointwise_norms_only(norm, scaled):
    m = models.create_model("llama_tiny", norm=norm)
    assert (m.embed_scale is not None) == scaled
    if scaled:
        assert m.embed_scale.item() == pytest.approx(math.sqrt(64))
    assert models.create_model("llama_tiny", norm=norm, embed_scale="none").embed_scale is None


def test_rmsnorm_uses_llama_eps():
    assert models.create_model("llama_tiny", norm="rmsnorm").norm.eps == 1e-5


def test_unknown_embed_scale_is_refused():
    with pytest.raises(ValueError, match="sqrt_d"):
        models.create_model("llama_tiny", norm="dyt", embed_scale="sqrt")


def test_wrap_units_are_the_blocks():
    m = models.create_model("llama_tiny", norm="rmsnorm")
    assert m.wrap_units() == list(m.layers)


def test_logits_are_causal():
    m = models.create_model("llama_tiny", norm={"name": "dyt", "impl": "eager"}).eval()
    tokens = torch.randint(0, 512, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 512
    with torch.no_grad():
        assert torch.allclose(m(tokens)[0, :8], m(changed)[0, :8], atol=1e-6)


@pytest.mark.parametrize("experiment", [f"paper/{n}" for n in PAPER_SIZES])
@pytest.mark.parametrize("norm", ["rmsnorm", "dyt"])
def test_paper_experiments_compose_and_build_on_meta(experiment, norm):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"norm={norm}"])
    assert cfg.trainer.global_batch * cfg.data.seq_len == 4_194_304, "4M tokens per step (paper App. A)"
    paper_gpus = 512 if experiment in ("paper/llama2_7b", "paper/llama2_13b") else 1024
    assert plan_batch(1024, cfg.trainer.micro_batch, paper_gpus).grad_accum == 1, "the paper's GPU count"
    for gpus in (1, 8, 64):  # any other GPU count accumulates up to the same 4M tokens
        plan = plan_batch(1024, cfg.trainer.micro_batch, gpus)
        assert plan.micro_batch * plan.grad_accum * gpus * 4096 == 4_194_304
        assert plan.micro_batch <= cfg.trainer.micro_batch
    sched = cfg.optim.schedule
    assert (sched.warmup_combine, sched.warmup_shape, sched.warmup_steps, sched.min_lr_ratio) == (
        "min",
        "quadratic",
        2000,
        0.1,
    )
    assert (cfg.optim.betas, cfg.optim.weight_decay, cfg.trainer.clip_grad) == ([0.9, 0.95], 0.1, 1.0)
    with torch.device("meta"):
        m = models.create_model(cfg.model, norm=cfg.norm)
    assert m.vocab_size == 32000 and (m.embed_scale is not None) == (norm == "dyt")


def test_activation_checkpointing_of_the_blocks_keeps_gradients():
    from dyt.engine.distributed import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = models.create_model("llama_tiny", norm={"name": "dyt", "impl": "eager"})
    checkpointed = models.create_model("llama_tiny", norm={"name": "dyt", "impl": "eager"})
    checkpointed.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(checkpointed)
    tokens = torch.randint(0, 512, (2, 16))
    for m in (plain, checkpointed):
        m(tokens).logsumexp(-1).mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
