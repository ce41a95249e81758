"""Engine building blocks: lr schedule, EMA, sampler, seeding, SLURM env, signal hand-over."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dyt.engine import distributed
from dyt.engine.ema import ModelEMA
from dyt.engine.precision import resolve_precision
from dyt.engine.sampler import SeededDataset, ShardedBatchSampler
from dyt.engine.schedule import LRSchedule, build_schedule, scaled_lr
from dyt.engine.signals import PREEMPTED_EXIT_CODE, PreemptionHandler


# ---- schedule -----------------------------------------------------------------------------------
def test_linear_warmup_then_cosine_to_zero():
    s = LRSchedule(1.0, total_steps=110, warmup_steps=10)
    assert [s(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)  # half way through the cosine
    assert s(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(s(i) >= s(i + 1) for i in range(10, 109))


def test_cosine_floor_absolute_and_ratio():
    assert LRSchedule(2.0, 100, 0, min_lr=0.1)(100) == pytest.approx(0.1)
    ratio = LRSchedule(2.0, 100, 0, min_lr=0.1, min_lr_ratio=0.1)  # ratio wins (LLaMA: 0.1 x peak)
    assert ratio(0) == pytest.approx(2.0) and ratio(100) == pytest.approx(0.2)
    assert ratio(50) == pytest.approx(0.2 + 0.5 * 1.8)


def test_quadratic_warmup_and_constant():
    s = LRSchedule(1.0, 100, 10, warmup_shape="quadratic", name="constant")
    assert [s(i) for i in (0, 4, 9)] == pytest.approx([0.19, 0.75, 1.0]), "fms-fsdp: 1 - (1 - s/w)^2"
    assert s(50) == s(99) == 1.0


def test_schedule_config_and_linear_scaling():
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    optim.lr, optim.lr_batch_size, optim.schedule.warmup_epochs = 4e-3, 4096, 2
    assert scaled_lr(optim, 1024) == pytest.approx(1e-3)  # paper Sec. 8: 4e-3 at batch 4096
    s = build_schedule(optim, 1e-3, total_steps=100, steps_per_epoch=10)
    assert s.warmup_steps == 20
    optim.schedule.warmup_steps = 5
    assert build_schedule(optim, 1e-3, 100, 10).warmup_steps == 5
    with pytest.raises(ValueError, match="cosine, constant"):
        LRSchedule(1.0, 10, name="step")


def test_precision_choices():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        resolve_precision("fp8", torch.device("cpu"))


# ---- EMA ----------------------------------------------------------------------------------------
def test_ema_math_period_and_swap():
    model = nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(model, decay=0.9, every=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(step=1)  # off-period: no change
    assert torch.equal(ema.state_dict()["weight"], start["weight"])
    ema.update(step=2)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, 0.9 * start[k] + 0.1 * (start[k] + 1.0))
    live = model.weight.detach().clone()
    with ema.swapped_in():
        torch.testing.assert_close(model.weight, ema.state_dict()["weight"])
    assert torch.equal(model.weight, live)


def test_ema_tied_weights_update_once():
    model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 4, bias=False))
    model[1].weight = model[0].weight
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(2.0)
    before = ema.state_dict()["0.weight"].clone()
    ema.update(step=1)
    torch.testing.assert_close(ema.state_dict()["0.weight"], before + 1.0)
    assert ema.state_dict()["1.weight"] is ema.state_dict()["0.weight"]


# ---- data order and seeding ---------------------------------------------------------------------
def test_sampler_shards_are_disjoint_full_and_resumable():
    ranks = [ShardedBatchSampler(103, batch_size=5, rank=r, world_size=2, seed=3) for r in range(2)]
    batches = [list(s) for s in ranks]
    assert [len(b) for b in batches] == [10, 10]  # 103 // (5 * 2): drop_last
    assert all(len(b) == 5 for rb in batches for b in rb)
    flat = [i for rb in batches for b in rb for i in b]
    assert len(flat) == len(set(flat)) == 100
    again = ShardedBatchSampler(103, 5, rank=1, world_size=2, seed=3)
    again.set_epoch(0, start_batch=4)
    assert list(again) == batches[1][4:] and len(again) == 6
    again.set_epoch(1)
    assert list(again) != batches[1]  # a new permutation each epoch
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedBatchSampler(9, 5, rank=0, world_size=2)


class _Noise(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(2)


def test_seeded_items_depend_on_seed_epoch_index_only():
    ds = SeededDataset(_Noise(), seed=0)
    forward = [ds[i] for i in range(8)]
    backward = [ds[i] for i in reversed(range(8))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    ds.set_epoch(1)
    assert not torch.equal(ds[0], forward[0])


# ---- SLURM environment --------------------------------------------------------------------------
def test_slurm_env_gives_ranks_and_master(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)  # no scontrol: parse the list
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[007-008,12],login1")
    assert distributed._ranks_from_env() == (3, 8, 1)
    assert distributed.os.environ["MASTER_ADDR"] == "gpu007"
    assert distributed.os.environ["MASTER_PORT"] == str(15000 + 4242)
    assert distributed.first_slurm_host("node5") == "node5"


# ---- signals ------------------------------------------------------------------------------------
def test_preemption_hands_over_to_previous_handler_then_exits():
    calls = []
    original = signal.signal(signal.SIGUSR1, lambda s, f: calls.append(s))
    try:
        handler = PreemptionHandler()
        signal.raise_signal(signal.SIGUSR1)
        assert handler.requested and calls == []  # ours only sets the flag
        with pytest.raises(SystemExit) as exit_info:
            handler.hand_over()
        assert calls == [signal.SIGUSR1] and exit_info.value.code == PREEMPTED_EXIT_CODE
        assert signal.getsignal(signal.SIGUSR1) is not handler._on_signal
    finally:
        signal.signal(signal.SIGUSR1, original)
