"""Language-model task (dyt/tasks/lm.py): next-token loss, val/loss and val/ppl, the paper's decay rule."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from dyt.engine.evaluation import evaluate_model
from dyt.engine.task import StepInfo
from dyt.tasks.lm import LanguageModelingTask

INFO = StepInfo(step=0, epoch=0, total_steps=1, steps_per_epoch=1)


def lm_cfg(cache, norm: str):
    return OmegaConf.create(
        {
            "model": {"name": "llama_tiny", "vocab_size": "${data.vocab_size}", "embed_scale": "auto"},
            # Plain PyTorch DyT: the fused kernel's compile time is not what this test is about.
            "norm": {"name": norm, **({"impl": "eager"} if norm == "dyt" else {})},
            "data": {
                **OmegaConf.to_container(OmegaConf.load("configs/data/text_stdlib.yaml")),
                "cache_dir": str(cache),
                "vocab_size": 384,
                "seq_len": 64,
                "max_docs": 30,
                "tokenizer_train_docs": 30,
            },
            "task": {**OmegaConf.to_container(OmegaConf.load("configs/task/lm.yaml")), "eval_max_sequences": 64},
        }
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["rmsnorm", "dyt"])
def test_tiny_lm_validation_loss_falls_on_the_offline_corpus(cache, norm):
    torch.manual_seed(0)
    task = LanguageModelingTask(lm_cfg(cache, norm))
    model, data = task.build_model(), task.train_data()
    before = evaluate_model(task.evaluate, model, torch.device("cpu"))
    assert before["val/loss"] == pytest.approx(math.log(384), abs=0.3)  # an untrained model is near uniform
    assert before["val/ppl"] == pytest.approx(math.exp(before["val/loss"]))
    opt = torch.optim.AdamW(task.param_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = torch.stack([data[i] for i in torch.randint(len(data), (16,), generator=g).tolist()])
        loss, _ = task.training_step(model, batch, INFO)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate_model(task.evaluate, model, torch.device("cpu"))
    assert after["val/loss"] < before["val/loss"] - 1.0


def test_loss_is_next_token_cross_entropy(cache):
    task = LanguageModelingTask(lm_cfg(cache, "rmsnorm"))
    model = task.build_model()
    batch = torch.stack([task.train_data()[i] for i in range(2)])
    logits = model(batch[:, :-1])
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 384), batch[:, 1:].reshape(-1))
    assert task.training_step(model, batch, INFO)[0].item() == pytest.approx(want.item(), rel=1e-6)


def test_decay_all_params_puts_alpha_and_embed_scale_under_weight_decay(cache):
    cfg = lm_cfg(cache, "dyt")
    model = LanguageModelingTask(cfg).build_model()
    default = LanguageModelingTask(cfg).param_groups(model, 0.1)
    assert any(p is model.embed_scale for p in default[1]["params"])  # 1-D: exempt by default
    cfg.task.decay_all_params = True
    groups = LanguageModelingTask(cfg).param_groups(model, 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1
    assert len(groups[0]["params"]) == len(list(model.parameters()))
