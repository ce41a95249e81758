"""Model FLOPs and MFU: the counts of the transformer families (torchtitan's convention), the peak table,
and the per-device rates in the progress line and metrics.jsonl."""

from __future__ import annotations

import json
import re

import pytest
import torch

import models
from dyt.engine import Trainer
from dyt.engine.flops import peak_flops, throughput_metrics
from tests.engine_helpers import DigitsTask, make_cfg


def test_llama_flops_per_token_matches_a_hand_count():
    m = models.create_model("llama_tiny", norm="rmsnorm")  # dim 64, 2 layers, 4 heads, 2 kv heads, vocab 512
    head_dim, hidden = 64 // 4, 192  # SwiGLU hidden: 2/3 x 4 x 64 = 170, rounded up to a multiple of 32
    attention = 64 * 64 + 2 * (64 * 2 * head_dim) + 64 * 64  # wq, wk and wv (2 kv heads), wo
    layer = attention + 3 * 64 * hidden + 2 * 64  # w1, w2, w3, two RMSNorm weights
    params = 2 * layer + 64 + 64 * 512  # final norm, output projection; the token embedding does no matmul
    seq_len = 16
    assert params == 131_392
    assert m.flops_per_token(seq_len) == 6 * params + 12 * 2 * 64 * seq_len == 812_928


def test_lm_task_counts_its_sequences():
    from dyt.tasks.lm import LanguageModelingTask
    from tests.test_llama_fsdp import compose_cfg

    cfg = compose_cfg(["experiment=llama_tiny_stdlib", "norm=rmsnorm"])
    task = LanguageModelingTask(cfg)
    model = task.build_model()
    seq_len = cfg.data.seq_len
    assert task.flops_per_sample(model) == seq_len * model.flops_per_token(seq_len)


def test_vision_transformers_count_what_acts_once_per_image_once():
    vit = models.create_model("vit_test", norm="layernorm")  # 32x32 images, 8x8 patches, width 32, 2 blocks
    tokens, total, head = 16 + 1, sum(p.numel() for p in vit.parameters()), 32 * 10 + 10
    assert vit.flops_per_image() == tokens * (6 * (total - head) + 12 * 2 * 32 * tokens) + 6 * head

    dit = models.create_model("dit_tiny", norm="layernorm")
    once_modules = [dit.t_embedder.mlp, dit.final_layer.adaLN_modulation, *(b.adaLN_modulation for b in dit.blocks)]
    once = sum(p.numel() for m in once_modules for p in m.parameters())
    table = dit.y_embedder.embedding_table.weight.numel()  # a lookup
    tokens, dim, depth = dit.grid_size**2, 64, len(dit.blocks)
    total = sum(p.numel() for p in dit.parameters())
    assert dit.flops_per_image() == tokens * (6 * (total - once - table) + 12 * depth * dim * tokens) + 6 * once


def test_peak_flops_from_the_table_an_override_or_none(monkeypatch):
    cuda = torch.device("cuda", 0)
    for name, peak in {
        "NVIDIA H100 80GB HBM3": 989e12,
        "NVIDIA H100 PCIe": 756e12,
        "NVIDIA H200": 989e12,
        "NVIDIA A100-SXM4-80GB": 312e12,
        "NVIDIA GeForce RTX 4090": None,
    }.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert peak_flops(cuda) == peak, name
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), 1e12) == 1e12
    with pytest.raises(ValueError, match="trainer.peak_flops=-1 is not allowed"):
        peak_flops(cuda, -1)


def test_throughput_metrics_per_device():
    row = throughput_metrics(8.0, 4096, "tokens", 4, 2e12, 100e12)
    assert row == {"train/tokens_per_device_per_s": 8192.0, "train/tflop_per_device_per_s": 4.0, "train/mfu": 4.0}
    assert throughput_metrics(8.0, 1, "images", 2, None, 100e12) == {"train/images_per_device_per_s": 4.0}


class CountedDigits(DigitsTask):
    def flops_per_sample(self, model) -> float:
        return 1e9


@pytest.mark.parametrize("peak", [None, 1e12])
def test_training_lines_show_the_flops_rate_and_mfu_with_a_peak(tmp_path, capsys, peak):
    torch.set_num_threads(1)
    cfg = make_cfg(tmp_path / "run", ["trainer.max_steps=2", "trainer.log_every_steps=1", "trainer.progress=log"])
    cfg.trainer.peak_flops = peak
    Trainer(cfg).fit(CountedDigits(cfg))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    assert len(rows) == 2
    for r in rows:  # one process: per device = all
        assert r["train/samples_per_device_per_s"] == pytest.approx(r["train/samples_per_s"])
        assert r["train/tflop_per_device_per_s"] == pytest.approx(r["train/samples_per_s"] * 1e9 / 1e12)
        assert ("train/mfu" in r) == (peak is not None)
        if peak:
            assert r["train/mfu"] == pytest.approx(100 * r["train/tflop_per_device_per_s"] * 1e12 / peak)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[step 2/2")][0]
    # one process: the FLOP rate in readable units, no per-device repeats of the totals
    assert re.search(r"  flops [\d.]+ [GT]FLOP/s", line) and "per_device" not in line
    assert ("mfu" in line) == (peak is not None)
