"""Training at scale on CPU with gloo: hybrid sharding (HSDP) and resuming at another world size.

One recipe (the digits MLP, constant lr, dropout 0) is trained for 8 steps by 4 processes as a 2 x 2
hybrid mesh (the reference). Its checkpoints are then resumed:

- by the same 4 processes: bit-identical to the reference;
- from step 2 (written by 4) by 2 processes under full FSDP2 (4 -> 2);
- from step 4 of that run (written by 2) in one process (2 -> 1);
- from step 6 of that run (written by 1, a single file) by 2 processes under DDP (1 -> 2).

Every continued run's losses equal the reference's to float tolerance (only the order of reductions
differs), because every step trains on exactly the same samples at any world size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dyt.engine import Trainer, load_checkpoint
from dyt.engine.checkpoint import LAST, checkpoint_name, latest_checkpoint
from dyt.engine.distributed import shard_group_size
from dyt.engine.sampler import ShardedBatchSampler, plan_batch
from dyt.io import atomic_write_text
from tests.engine_helpers import DigitsTask, make_cfg
from tests.test_engine_distributed import launch, torchrun

STEPS = 8
COMMON = (
    "trainer.global_batch=64",
    "trainer.log_every_steps=1",
    "trainer.ckpt_every_steps=2",
    "trainer.keep_checkpoints=8",
    "trainer.eval_every_epochs=null",
    "trainer.ema_decay=0.9",
    "optim.schedule.name=constant",
    f"trainer.max_steps={STEPS}",
)
HYBRID = ("trainer.distributed=fsdp", "trainer.sharding=hybrid", "trainer.shard_group_size=2")


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def rolled_back(src: Path, dest: Path, step: int) -> Path:
    """A copy of run ``src`` whose checkpoints after ``step`` are gone and whose ``last`` names ``step``'s."""
    shutil.copytree(src, dest)
    ckpts = dest / "checkpoints"
    for p in ckpts.glob("step_*"):
        if int(p.name[5:13]) > step:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (name,) = [p.name for p in ckpts.glob(f"step_{step:08d}*") if not p.name.endswith(".json")]
    atomic_write_text(ckpts / LAST, name + "\n")
    return dest


def assert_continues(run: Path, reference: dict[int, float], after: int) -> None:
    got = losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(after + 1, STEPS + 1):
        assert got[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), f"step {step}"


# ---- unit: the settings and the data order ---------------------------------------------------------
def test_shard_group_size_defaults_to_one_node_and_refuses_what_cannot_run(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert shard_group_size("fsdp", "hybrid", None, 32) == 8
    assert shard_group_size("fsdp", "hybrid", 4, 32) == 4
    assert shard_group_size("fsdp", "full", None, 32) == 32
    assert shard_group_size("fsdp", "hybrid", None, 1) == 1
    bad = {
        ("fsdp", "half", None, 8): "unknown trainer.sharding 'half'",
        ("ddp", "hybrid", None, 8): "trainer.sharding=hybrid needs trainer.distributed=fsdp",
        ("fsdp", "hybrid", 3, 8): "do not split into shard groups of 3",
        ("fsdp", "hybrid", 0, 8): "trainer.shard_group_size=0 is not allowed",
        ("fsdp", "full", 4, 8): "needs trainer.sharding=hybrid",
    }
    for args, message in bad.items():
        with pytest.raises(ValueError, match=message):
            shard_group_size(*args)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    with pytest.raises(ValueError, match="set trainer.shard_group_size"):
        shard_group_size("fsdp", "hybrid", None, 8)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    assert shard_group_size("fsdp", "hybrid", None, 8) == 4


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_every_step_trains_on_the_same_samples_at_any_world_size(world_size):
    """The data position is a global step count: step s of an epoch takes samples s*G .. (s+1)*G - 1 of
    the epoch's permutation whatever the number of processes and micro-batches."""
    n, global_batch, steps = 200, 16, 3
    plan = plan_batch(global_batch, 4, world_size)
    ranks = [ShardedBatchSampler(n, plan.micro_batch, r, world_size, seed=5) for r in range(world_size)]
    one = ShardedBatchSampler(n, global_batch, 0, 1, seed=5)
    for s in ranks + [one]:
        s.set_epoch(3, 0)
    per_rank = [list(s) for s in ranks]
    whole = list(one)
    for step in range(steps):
        batches = [b for r in per_rank for b in r[step * plan.grad_accum : (step + 1) * plan.grad_accum]]
        assert sorted(i for b in batches for i in b) == sorted(whole[step])
    for start_step in range(steps):  # resuming at a step boundary continues the same global order
        for r, s in enumerate(ranks):
            s.set_epoch(3, start_step * plan.grad_accum)
            assert list(s) == per_rank[r][start_step * plan.grad_accum :]


# ---- multi-process runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hybrid(tmp_path_factory) -> Path:
    """The reference: 8 steps on 4 processes, a 2 x 2 hybrid mesh, a sharded checkpoint every 2 steps."""
    run = tmp_path_factory.mktemp("hybrid") / "run"
    results = torchrun(run, *HYBRID, *COMMON, nproc=4)
    assert (results["world_size"], results["steps"]) == (4, STEPS)
    return run


@pytest.mark.slow
@pytest.mark.distributed
def test_hybrid_sharding_shards_within_groups_and_resumes_bit_identically(hybrid, tmp_path):
    from dyt.engine.safe_read import SafeFileSystemReader

    meta = SafeFileSystemReader(hybrid / "checkpoints" / checkpoint_name(2, True)).read_metadata()
    weight = meta.state_dict_metadata["model.blocks.0.fc.weight"]
    assert len(weight.chunks) == 2  # sharded over a group of 2 (full sharding over 4 would give 4 chunks)

    run = rolled_back(hybrid, tmp_path / "run", 2)
    torchrun(run, *HYBRID, *COMMON, nproc=4)
    assert losses(run) == losses(hybrid)
    a, b = load_checkpoint(run), load_checkpoint(hybrid)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


@pytest.fixture(scope="module")
def on_two(hybrid, tmp_path_factory) -> Path:
    """4 -> 2: the hybrid run's step-2 checkpoint continued by 2 processes under full FSDP2."""
    run = rolled_back(hybrid, tmp_path_factory.mktemp("on_two") / "run", 2)
    torchrun(run, "trainer.distributed=fsdp", *COMMON)
    return run


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_checkpoint_of_4_hybrid_processes_resumes_on_2(hybrid, on_two):
    assert_continues(on_two, losses(hybrid), after=2)


@pytest.fixture(scope="module")
def on_one(on_two, tmp_path_factory) -> Path:
    """2 -> 1: the step-4 checkpoint of ``on_two`` (written by 2 processes) continued in this process."""
    run = rolled_back(on_two, tmp_path_factory.mktemp("on_one") / "run", 4)
    torch.set_num_threads(1)
    cfg = make_cfg(run, ["trainer.distributed=fsdp", *COMMON])
    assert Trainer(cfg).fit(DigitsTask(cfg))["world_size"] == 1
    return run


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_checkpoint_of_2_processes_resumes_in_one(hybrid, on_one):
    assert_continues(on_one, losses(hybrid), after=4)
    assert (on_one / "checkpoints" / checkpoint_name(STEPS, False)).is_file()  # one process writes one file


@pytest.mark.slow
@pytest.mark.distributed
def test_single_file_checkpoint_of_one_process_resumes_on_2(hybrid, on_one, tmp_path):
    run = rolled_back(on_one, tmp_path / "run", 6)
    torchrun(run, "trainer.distributed=ddp", *COMMON)
    assert_continues(run, losses(hybrid), after=6)


# ---- selective activation checkpointing --------------------------------------------------------------
@pytest.mark.parametrize("every_n", [1, 2, 3])
def test_selective_activation_checkpointing_recomputes_every_nth_block_with_the_same_gradients(every_n):
    import models
    from dyt.engine.distributed import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = models.create_model("llama_tiny", norm={"name": "dyt", "impl": "eager"}, n_layers=6)
    selective = models.create_model("llama_tiny", norm={"name": "dyt", "impl": "eager"}, n_layers=6)
    selective.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(selective, "every_n", every_n)
    calls = [0] * 6
    for i, block in enumerate(selective.layers):
        block.attention.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    tokens = torch.randint(0, 512, (2, 16))
    losses = [m(tokens).logsumexp(-1).mean() for m in (plain, selective)]
    for loss in losses:
        loss.backward()
    # fms-fsdp's placement: the middle block of each group of n (n = 2: blocks 0, 2, 4)
    wrapped = {1: [0, 1, 2, 3, 4, 5], 2: [0, 2, 4], 3: [1, 4]}[every_n]
    assert calls == [2 if i in wrapped else 1 for i in range(6)]  # a wrapped block runs again in backward
    assert torch.equal(losses[0], losses[1])
    for (name, a), b in zip(plain.named_parameters(), selective.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6, msg=name)


def test_activation_checkpointing_settings_are_refused_with_the_allowed_values():
    import models
    from dyt.engine.distributed import apply_activation_checkpointing

    m = models.create_model("llama_tiny", norm="rmsnorm")
    with pytest.raises(ValueError, match="must be false, true or every_n"):
        apply_activation_checkpointing(m, "half")
    with pytest.raises(ValueError, match="trainer.ac_every_n=0 is not allowed"):
        apply_activation_checkpointing(m, "every_n", 0)
    with pytest.raises(ValueError, match="needs a model with wrap_units"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2), "every_n", 2)


def test_llama_recipes_shard_and_checkpoint_as_the_official_commands():
    """jiachenzhu/DyT other_tasks/LLaMA/README.md: --sharding_strategy, --fsdp_activation_checkpointing and
    --selective_checkpointing of the four Table 4 commands."""
    from tests.test_llama_fsdp import compose_cfg

    official = {
        "7b": ("hybrid", False, None),
        "13b": ("hybrid", "every_n", 2),
        "34b": ("full", "every_n", 2),
        "70b": ("full", True, None),
    }
    for size, (sharding, ac, every_n) in official.items():
        tc = compose_cfg([f"experiment=paper/llama2_{size}", "norm=dyt"]).trainer
        assert (tc.sharding, tc.activation_checkpointing) == (sharding, ac), size
        if every_n is not None:
            assert tc.ac_every_n == every_n, size


# ---- asynchronous checkpoints ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.distributed
def test_async_checkpoint_killed_mid_write_leaves_the_previous_one_in_use(hybrid, tmp_path):
    """Rank 0 is SIGKILLed in the background write of the step-4 checkpoint: ``last`` still names step 2's,
    and the same command resumes from it onto the reference losses."""
    args = ("trainer.distributed=fsdp", "trainer.async_checkpoint=true", *COMMON)
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    killed = launch(run, *args, env={"DYT_TEST_KILL_IN_ASYNC_WRITE": "2"})
    assert killed.returncode != 0 and not (run / "results.json").exists()
    assert (ckpts / ".step_00000004.tmp").is_dir()  # the write had begun
    assert (ckpts / LAST).read_text().strip() == checkpoint_name(2, True)
    assert latest_checkpoint(ckpts) == ckpts / checkpoint_name(2, True)

    torchrun(run, *args)
    assert_continues(run, losses(hybrid), after=2)
    assert not list(ckpts.glob(".*.tmp*"))
    for step in (2, 4, 6, 8):  # every async checkpoint was published with its manifest
        assert latest_checkpoint(ckpts) and (ckpts / checkpoint_name(step, True) / "manifest.json").is_file()
    assert (ckpts / LAST).read_text().strip() == checkpoint_name(STEPS, True)
