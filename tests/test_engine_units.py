"""Engine building blocks: lr schedule, EMA, sampler, seeding, SLURM env, signal hand-over."""

from __future__ import annotations

import math
import random
import signal

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dyt.engine import distributed
from dyt.engine.ema import ModelEMA
from dyt.engine.precision import resolve_precision
from dyt.engine.sampler import (
    BatchPlan,
    SeededDataset,
    ShardedBatchSampler,
    derive_seed,
    derive_seeds,
    plan_batch,
    seed_all,
)
from dyt.engine.schedule import (
    Schedule,
    build_hyper_schedules,
    build_lr_schedule,
    build_optimizer,
    build_scalar_schedule,
    scaled_lr,
    set_hyper,
)
from dyt.engine.signals import PREEMPTED_EXIT_CODE, PreemptionHandler
from dyt.engine.task import Task


# ---- schedule -----------------------------------------------------------------------------------
def lr_schedule(total=110, **schedule):
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    optim.schedule = OmegaConf.merge(optim.schedule, schedule)
    return build_lr_schedule(optim, 1.0, total_steps=total, steps_per_epoch=10)


def test_linear_warmup_from_zero_then_cosine_to_the_floor():
    s = lr_schedule(warmup_steps=10, min_lr=0.1)  # ConvNeXt / DINO cosine_scheduler: warmup from 0
    assert [s(i) for i in (0, 4, 10)] == pytest.approx([0.0, 0.4, 1.0])
    assert s(60) == pytest.approx(0.1 + 0.5 * 0.9)  # half way through the cosine
    assert s(109) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 100)))
    assert s(500) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 200))


def test_warmup_epochs_floor_ratio_and_linear_scaling():
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    optim.lr, optim.lr_batch_size, optim.schedule.warmup_epochs = 4e-3, 4096, 2
    assert scaled_lr(optim, 1024) == pytest.approx(1e-3)  # paper App. A: 4e-3 at batch 4096
    assert build_lr_schedule(optim, 1e-3, 100, steps_per_epoch=10).warmup == 20
    assert lr_schedule(min_lr=0.5, min_lr_ratio=0.1)(110) == pytest.approx(0.1), "the ratio wins (LLaMA)"
    with pytest.raises(ValueError, match="cosine, polynomial"):
        lr_schedule(name="cyclic")


def test_left_out_schedule_keys_take_the_documented_defaults():
    """A user's ``optim.schedule`` may leave keys out: each gets the value configs/optim/adamw.yaml documents
    (cosine to 0, linear warmup of 0 epochs, sequential, power 1); without ``lr_batch_size`` the lr is used
    as is."""
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    documented = build_lr_schedule(optim, 1.0, 110, steps_per_epoch=10)
    optim.schedule = {}
    assert build_lr_schedule(optim, 1.0, 110, steps_per_epoch=10) == documented
    assert optim.lr_batch_size is None and scaled_lr(optim, 1024) == optim.lr


def test_fms_fsdp_llama_schedule_is_the_min_of_both_curves():
    """fms-fsdp main_training_llama.py: min(1 - (1 - s/w)^2, 0.1 + 0.45 (1 + cos(pi s / n)))."""
    s = lr_schedule(
        total=1000, name="cosine", warmup_steps=100, warmup_shape="quadratic", warmup_combine="min", min_lr_ratio=0.1
    )
    for step in (0, 1, 50, 99, 100, 101, 500, 999, 1000, 2000):
        warm = 1 - (1 - min(step, 100) / 100) ** 2
        cos = 0.1 + 0.45 * (1 + math.cos(min(step, 1000) / 1000 * math.pi))
        assert s(step) == pytest.approx(min(warm, cos)), step


def test_polynomial_decay_as_fairseq():
    s = lr_schedule(total=100, name="polynomial", warmup_steps=10, power=2.0)
    assert s(5) == pytest.approx(0.5) and s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx((1 - 45 / 90) ** 2) and s(100) == pytest.approx(0.0)


def test_scalar_schedules_per_step_and_per_epoch():
    momentum = build_scalar_schedule({"shape": "cosine", "start": 0.996, "end": 1.0}, 100, 10)
    assert momentum(0) == pytest.approx(0.996) and momentum(50) == pytest.approx(0.998)
    # DINO's teacher temperature: 0.04 -> 0.07 over 3 epochs (linspace per epoch), then constant.
    temp = build_scalar_schedule(
        {"shape": "constant", "start": 0.07, "warmup_epochs": 3, "warmup_start": 0.04, "unit": "epoch"}, 100, 10
    )
    assert [temp(s) for s in (0, 9, 10, 25, 30, 99)] == pytest.approx([0.04, 0.04, 0.05, 0.06, 0.07, 0.07])
    gumbel = build_scalar_schedule({"shape": "exponential", "start": 2.0, "end": 0.5, "decay": 0.5}, 100, 10)
    assert [gumbel(s) for s in (0, 1, 2, 3)] == [2.0, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="unknown schedule keys \\['stop'\\]; valid keys are: decay, end, epochs"):
        build_scalar_schedule({"start": 1.0, "stop": 2.0}, 10, 1)


def test_hyper_schedules_respect_exempt_groups():
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    optim.schedules = {"weight_decay": {"shape": "cosine", "start": 0.04, "end": 0.4}}
    model = nn.Linear(4, 4)
    opt = build_optimizer(optim, Task(None), model, 1e-3)
    wd = build_hyper_schedules(optim, 100, 10)["weight_decay"]
    set_hyper(opt, "weight_decay", wd(50))
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.22, 0.0]), "bias stays undecayed"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shape": "cyclic"}, "unknown schedule shape 'cyclic'; valid choices are: constant, linear, cosine"),
        ({"shape": "step"}, "shape 'step' needs a step size of at least one tick, got None: set step_size_steps or"),
        ({"shape": "step", "step_size": 0}, "shape 'step' needs a step size of at least one tick, got 0"),
        ({"warmup_shape": "cubic"}, "unknown schedule warmup_shape 'cubic'; valid choices are: linear, quadratic"),
        ({"warmup_combine": "max"}, "unknown schedule warmup_combine 'max'; valid choices are: sequential, min"),
        ({"warmup": -1}, "schedule lengths must be >= 0 \\(warmup=-1, total=10\\)"),
        ({"total": -1}, "schedule lengths must be >= 0 \\(warmup=0, total=-1\\)"),
        ({"tick": 0}, "schedule lengths must be >= 0"),
    ],
)
def test_bad_schedule_values_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**{"shape": "cosine", "start": 1.0, "end": 0.0, "total": 10, **options})


def test_decay_shapes_at_their_ends_and_middle():
    assert Schedule("cosine", 1.0, 0.0, total=0)(1) == 0.0  # a run of no steps is allowed (max(1, length))
    assert [Schedule("constant", 1.0, 0.0, total=10)(t) for t in (0, 5, 20)] == [1.0, 1.0, 1.0]  # end unused
    linear = Schedule("linear", 1.0, 0.2, total=10)
    assert [linear(t) for t in (0, 2, 5, 10, 20)] == pytest.approx([1.0, 0.84, 0.6, 0.2, 0.2])  # cosine: 0.92 at 2
    assert Schedule("linear", 1.0, 0.0, total=1)(1) == 0.0  # one-step decay
    explicit = build_scalar_schedule({"shape": "linear", "start": 1.0, "end": 0.0, "steps": 10}, 100, 10)
    assert [explicit(t) for t in (5, 10, 50)] == pytest.approx([0.5, 0.0, 0.0]), "steps: the decay length"
    growth = Schedule("exponential", 0.5, 2.0, total=10, decay=2.0)  # a rising value is capped at end
    assert [growth(t) for t in range(4)] == [0.5, 1.0, 2.0, 2.0]
    assert Schedule("exponential", 2.0, 0.5, total=10)(5) == 2.0  # decay 1: stays at start
    assert Schedule("polynomial", 1.0, 0.2, total=10)(5) == pytest.approx(0.6)
    no_warmup_min = Schedule("cosine", 1.0, 0.0, total=10, warmup_combine="min")  # min of no warmup: the decay
    assert no_warmup_min(5) == pytest.approx(0.5) and no_warmup_min(0) == 1.0


def test_scalar_schedule_defaults_and_epoch_unit():
    """Left-out keys: cosine, power 1, decay 1; with ``unit: epoch`` every length counts in epochs."""
    halfway = build_scalar_schedule({"start": 1.0, "end": 0.0}, 100, 10)
    assert halfway(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4))), "cosine by default"
    assert build_scalar_schedule({"shape": "polynomial", "start": 1.0, "end": 0.0}, 100, 10)(50) == 0.5
    assert build_scalar_schedule({"shape": "exponential", "start": 2.0, "end": 0.5}, 100, 10)(3) == 2.0
    per_epoch = build_scalar_schedule(
        {"shape": "linear", "start": 1.0, "end": 0.0, "warmup_steps": 20, "unit": "epoch"}, 100, 10
    )
    assert (per_epoch.total, per_epoch.warmup, per_epoch.tick) == (10, 2, 10)
    assert per_epoch(19) == pytest.approx(0.5) and per_epoch(60) == pytest.approx(0.5)  # epochs 1 and 6 of 10
    with pytest.raises(ValueError, match="unknown schedule unit 'day'; valid choices are: step, epoch"):
        build_scalar_schedule({"start": 1.0, "unit": "day"}, 10, 1)


def test_hyper_schedules_in_epochs_and_never_for_the_lr():
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    optim.schedules = {"weight_decay": {"shape": "linear", "start": 0.0, "end": 1.0, "epochs": 5}}
    assert build_hyper_schedules(optim, 100, steps_per_epoch=10)["weight_decay"](25) == pytest.approx(0.5)
    optim.schedules = {"lr": {"start": 1.0}}
    with pytest.raises(ValueError, match="^optim.schedules.lr is not allowed: the learning rate is scheduled by"):
        build_hyper_schedules(optim, 100, 10)


def test_optimizer_takes_the_configured_values_and_drops_empty_groups():
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    optim.betas, optim.eps = [0.8, 0.9], 1e-6
    opt = build_optimizer(optim, Task(None), nn.Linear(4, 4, bias=False), peak_lr=0.5)
    assert len(opt.param_groups) == 1, "the empty no-decay group (no 1-d parameters) is dropped"
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.5, (0.8, 0.9), 1e-6, 0.05)
    set_hyper(opt, "lr", 0.25)  # no lr_scale in the group: scale 1
    assert group["lr"] == 0.25
    optim.name = "lamb"
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; valid choices are: adamw, adam, sgd"):
        build_optimizer(optim, Task(None), nn.Linear(4, 4), peak_lr=0.5)


def test_step_decay_at_its_boundaries_in_steps_or_epochs():
    """torchvision's StepLR (lr x 0.1 every 30 epochs, stepped once per epoch): the same optimizer steps
    whether the step size is given in epochs or steps, and whatever the schedule's unit."""
    optim = OmegaConf.load("configs/optim/adamw.yaml")
    optim.schedule = OmegaConf.merge(optim.schedule, {"name": "step", "step_size_epochs": 30})  # decay 0.1
    spe = 10
    s = build_lr_schedule(optim, 0.1, total_steps=90 * spe, steps_per_epoch=spe)
    assert (s.shape, s.step_size, s.decay, s.warmup) == ("step", 30 * spe, 0.1, 0)
    expected = {0: 0.1, 299: 0.1, 300: 0.01, 599: 0.01, 600: 0.001, 899: 0.001, 5000: 0.1 * 0.1**16}
    assert {t: s(t) for t in expected} == pytest.approx(expected)
    optim.schedule.step_size_steps = 300  # wins over step_size_epochs
    assert build_lr_schedule(optim, 0.1, 900, spe) == s
    per_epoch = build_scalar_schedule(
        {"shape": "step", "start": 1.0, "end": 0.0, "decay": 0.5, "step_size_epochs": 2, "unit": "epoch"}, 100, spe
    )
    per_step = build_scalar_schedule(
        {"shape": "step", "start": 1.0, "end": 0.0, "decay": 0.5, "step_size_steps": 20}, 100, spe
    )
    assert (per_epoch.tick, per_epoch.step_size, per_step.step_size) == (spe, 2, 20)
    assert (
        [per_epoch(t) for t in range(100)]
        == [per_step(t) for t in range(100)]
        == [0.5 ** (t // 20) for t in range(100)]
    )
    floored = build_scalar_schedule(
        {"shape": "step", "start": 1.0, "end": 0.3, "decay": 0.5, "step_size_steps": 1}, 10, 1
    )
    assert [floored(t) for t in range(4)] == [1.0, 0.5, 0.3, 0.3], "clipped at end, as exponential"


def test_step_decay_counts_from_the_end_of_the_warmup():
    s = lr_schedule(total=100, name="step", warmup_steps=10, step_size_steps=20, decay=0.5)
    assert [s(t) for t in (0, 5, 10, 29, 30, 49, 50)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.5, 0.5, 0.25])


def test_sgd_takes_momentum_nesterov_and_the_tasks_weight_decay_groups():
    optim = OmegaConf.merge(
        OmegaConf.load("configs/optim/adamw.yaml"),
        {"name": "sgd", "betas": None, "eps": None, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-4},
    )
    model = nn.Linear(4, 4)
    opt = build_optimizer(optim, Task(None), model, peak_lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    decay, exempt = opt.param_groups
    assert (decay["params"], exempt["params"]) == ([model.weight], [model.bias]), "the bias is exempt by default"
    assert (decay["weight_decay"], exempt["weight_decay"]) == (1e-4, 0.0)
    assert (decay["lr"], decay["momentum"], decay["nesterov"], decay["dampening"]) == (0.1, 0.8, True, 0)
    # PyTorch's SGD: weight decay is added to the gradient (L2), then momentum (torchvision's recipe).
    model.weight.grad, model.bias.grad = torch.ones(4, 4), torch.ones(4)
    w0 = model.weight.detach().clone()
    opt.step()
    g = 1 + 1e-4 * w0
    torch.testing.assert_close(model.weight.detach(), w0 - 0.1 * (g + 0.8 * g))  # Nesterov: g + momentum * buf
    for key, value, message in (
        (
            "betas",
            [0.9, 0.999],
            "optim.betas=\\[0.9, 0.999\\] does nothing for optimizer 'sgd': choose the optimizer with",
        ),
        ("momentum", None, "optim.momentum is null but optimizer 'sgd' needs it"),
    ):
        bad = OmegaConf.merge(optim, {key: value})
        with pytest.raises(ValueError, match=message):
            build_optimizer(bad, Task(None), model, peak_lr=0.1)
    adamw = OmegaConf.merge(OmegaConf.load("configs/optim/adamw.yaml"), {"momentum": 0.9})
    with pytest.raises(ValueError, match="optim.momentum=0.9 does nothing for optimizer 'adamw'"):
        build_optimizer(adamw, Task(None), model, peak_lr=0.1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"momentum": 1.5}, "optim.momentum=1.5 is not allowed: it must be a number in [0, 1) or null"),
        ({"nesterov": "yes"}, "optim.nesterov='yes' is not allowed: it must be true or false or null"),
        ({"momentum": 0.0}, "optim.nesterov=true with optim.momentum=0.0 is not allowed: Nesterov momentum needs"),
        ({"schedule": {"step_size_epochs": 0}}, "optim.schedule.step_size_epochs=0 is not allowed: it must be a pos"),
        ({"schedule": {"step_size_steps": 2.5}}, "optim.schedule.step_size_steps=2.5 is not allowed: it must be a pos"),
        ({"schedule": {"decay": -0.1}}, "optim.schedule.decay=-0.1 is not allowed: it must be a positive number"),
    ],
)
def test_sgd_and_step_values_are_checked_at_start_up(override, message):
    from dyt.engine.validate import ConfigError, validate_config

    sgd = {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": True, "schedule": {}}
    cfg = OmegaConf.create({"seed": 0, "trainer": {"global_batch": 8, "epochs": 1}, "optim": sgd})
    validate_config(cfg)
    with pytest.raises(ConfigError) as error:
        validate_config(OmegaConf.merge(cfg, {"optim": override}))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_global_batch_plans():
    assert plan_batch(4096, 64, 64) == BatchPlan(4096, 64, 1, 64)  # the paper's 64 GPUs
    assert plan_batch(4096, 64, 8) == BatchPlan(4096, 64, 8, 8)
    assert plan_batch(96, 40, 2) == BatchPlan(96, 24, 2, 2), "equal micro-batches no larger than 40"
    assert plan_batch(64, None, 1) == BatchPlan(64, 64, 1, 1)
    assert plan_batch(28, 10, 1) == BatchPlan(28, 7, 4, 1), "3 x 10 would not be equal: the next divisor, 4"
    assert plan_batch(4, 1, 1) == BatchPlan(4, 1, 4, 1) and plan_batch(1, None, 1).micro_batch == 1
    plan = plan_batch(96, 40, 2)
    assert all(type(v) is int for v in vars(plan).values()), f"whole numbers, not floats: {plan}"
    with pytest.raises(ValueError, match="trainer.micro_batch=0 is not allowed"):
        plan_batch(64, 0, 1)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        plan_batch(256, 32, 3)
    for bad in (0, -4, 2.5, "64"):
        with pytest.raises(ValueError, match="trainer.global_batch=.* positive whole number"):
            plan_batch(bad, None, 1)


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
    epoch1 = list(again)
    assert len(epoch1) == 10 and epoch1 != batches[1]  # the whole of a new permutation each epoch
    other_seed = ShardedBatchSampler(103, 5, rank=1, world_size=2, seed=4)
    assert list(other_seed) != batches[1], "the seed changes the order"
    assert list(ShardedBatchSampler(10, 5)) == list(ShardedBatchSampler(10, 5, rank=0, world_size=1, seed=0))
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
    assert not torch.equal(forward[0], forward[1]), "the index changes the item"
    assert not torch.equal(SeededDataset(_Noise(), seed=1)[0], forward[0]), "the seed changes the item"
    ds.set_epoch(1)
    assert not torch.equal(ds[0], forward[0])


def test_block_seeds_equal_one_seed_per_item():
    """SeededDataset derives its seeds a block at a time (derive_seeds); each equals derive_seed's."""
    keys_list = [(), (0,), (0, 3), (7, 1, 2), (1, 2, 3, 4), (2**32 - 1, 5), (2**32 + 1, 0)]
    last = np.array([0, 1, 1023, 1024, 5000, 2**31, 2**32 - 1])
    for keys in keys_list:
        got = derive_seeds(*keys, last=last)
        assert got.dtype == np.uint32
        assert got.tolist() == [derive_seed(*keys, int(i)) for i in last], keys
    assert derive_seeds(1, last=np.array([2**32])).tolist() == [derive_seed(1, 2**32)]  # a two-word key

    class Big(_Noise):
        def __len__(self):
            return 3000

    ds = SeededDataset(Big(), seed=4)
    ds.set_epoch(2)
    for i in (0, 1023, 1024, 2999):
        seed_all(4, 2, i, cuda=False)
        expected = torch.rand(2)
        assert torch.equal(ds[i], expected), i


def _rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].tolist(), random.getstate()


class _Fixed(torch.utils.data.Dataset):
    draws_random = False

    def __len__(self):
        return 2000

    def __getitem__(self, i):
        return torch.tensor([float(i)])


def test_a_batch_of_items_that_draw_nothing_is_seeded_once_and_leaves_the_same_rngs():
    """DataLoader reads a batch through __getitems__; for a dataset with draws_random = False the items
    come unseeded and the RNGs are left as the per-item path leaves them (the collate function draws
    from them), so a batch costs one seeding, not one per item; other datasets keep per-item seeding."""
    ds = SeededDataset(_Fixed(), seed=3)
    ds.set_epoch(1)
    indices = [5, 1500, 7, 1024]
    per_item = [ds[i] for i in indices]
    expected = _rng_states()
    torch.manual_seed(99)
    calls = []
    original = ds._seed
    ds._seed = lambda index: calls.append(index) or original(index)
    batch = ds.__getitems__(indices)
    assert calls == [1024] and all(torch.equal(a, b) for a, b in zip(batch, per_item, strict=True))
    got = _rng_states()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[indices])
    assert torch.equal(next(iter(loader)), torch.stack(per_item))
    noise = SeededDataset(_Noise(), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(noise.__getitems__([3, 1]), [noise[3], noise[1]], strict=True))
    assert noise.__getitems__([]) == [] and ds.__getitems__([]) == []


def test_digits_items_draw_no_random_numbers():
    """DigitsDataset declares draws_random = False: reading its items leaves every RNG untouched."""
    from dyt.data.images import DigitsDataset

    data = DigitsDataset("train")
    assert data.draws_random is False
    seed_all(1)
    before = _rng_states()
    items = [data[i] for i in range(0, len(data), 97)]
    after = _rng_states()
    assert len(items) > 10 and torch.equal(before[0], after[0]) and before[1:] == after[1:]


class _Epochs(_Noise):
    epoch = None

    def set_epoch(self, epoch):
        self.epoch = epoch


def test_seeded_dataset_forwards_set_epoch():
    inner = _Epochs()
    SeededDataset(inner, seed=0).set_epoch(3)
    assert inner.epoch == 3


def test_seed_all_seeds_torch_numpy_and_python_from_every_key():
    def draw():
        return torch.rand(1).item(), np.random.rand(), random.random()

    seed_all(1, 2, cuda=False)
    first = draw()
    seed_all(1, 2)  # with cuda: the same CPU stream
    assert draw() == first
    # (1, 2, 0) is NOT among them: numpy's SeedSequence gives (1, 2) and (1, 2, 0) the same state; callers
    # always pass tuples of one length per use, so this costs nothing today
    for other in ((2, 1), (1, 3), (1, 2, 1)):
        seed_all(*other, cuda=False)
        assert all(a != b for a, b in zip(draw(), first)), f"keys {other} give the stream of (1, 2)"


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
