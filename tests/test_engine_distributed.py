"""Two-process torchrun runs (gloo, CPU): DDP and FSDP2 train, and their checkpoints (a single file
for DDP, a sharded DCP directory for FSDP2) resume or load in a single process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyt.engine import Trainer, load_checkpoint, load_model_state
from tests.engine_helpers import ENV, DigitsTask, TinyNet, make_cfg

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.distributed


def launch(run: Path, *overrides: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m dyt.launch --nproc_per_node=<nproc> tests/engine_driver.py <run> trainer.device=cpu
    <overrides>``: torchrun through the launcher users start (tests/test_launch.py tests its failures)."""
    cmd = [
        sys.executable,
        "-m",
        "dyt.launch",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "tests/engine_driver.py",
        str(run),
        "trainer.device=cpu",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=300)


def torchrun(run: Path, *overrides: str, nproc: int = 2) -> dict:
    """Train with :func:`launch` and return rank 0's results."""
    proc = launch(run, *overrides, nproc=nproc)
    # A gloo teardown race would show up here as a SIGABRT exit.
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# A constant lr makes a run's first steps independent of its length (max_steps), so runs of different
# lengths can be compared step for step.
# The recipe's global batch of 64 in micro-batches of at most 32: 2 processes x 32, or 1 x 2 x 32.
COMMON = (
    "trainer.global_batch=64",
    "trainer.micro_batch=32",
    "trainer.log_every_steps=2",
    "trainer.ema_decay=0.9",
    "optim.schedule.name=constant",
    "trainer.keep_checkpoints=4",
    "trainer.accept_changes=[trainer.max_steps]",  # runs below are extended on purpose
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, dict]:
    """8 DDP steps on 2 processes (one torchrun launch shared by the tests below)."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    return run, torchrun(run, "trainer.max_steps=8", *COMMON)


def test_ddp_two_processes_train_and_resume_in_one(ddp_run, tmp_path):
    src, results = ddp_run
    assert (results["world_size"], results["global_batch"], results["grad_accum"], results["steps"]) == (2, 64, 1, 8)
    assert [r["step"] for r in rows(src) if "train/loss" in r] == [2, 4, 6, 8]
    state = load_checkpoint(src)
    assert state["step"] == 8 and state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # DDP's prefix is not stored

    run = tmp_path / "run"
    shutil.copytree(src, run)
    torch.set_num_threads(1)
    cfg = make_cfg(run, ["trainer.max_steps=12", *COMMON])
    resumed = Trainer(cfg).fit(DigitsTask(cfg))
    assert (resumed["world_size"], resumed["global_batch"], resumed["grad_accum"], resumed["steps"]) == (1, 64, 2, 12)
    assert [r["step"] for r in rows(run) if "train/loss" in r] == [2, 4, 6, 8, 10, 12]
    assert load_checkpoint(run)["step"] == 12


@pytest.mark.slow
def test_fsdp2_resumes_sharded_and_its_dcp_checkpoint_loads_in_one_process(ddp_run, tmp_path):
    run = tmp_path / "run"
    results = torchrun(run, "trainer.distributed=fsdp", "trainer.max_steps=6", *COMMON)
    ckpt_dir = run / "checkpoints" / "step_00000006"
    assert (ckpt_dir / "meta.pt").is_file() and len(list(ckpt_dir.glob("*.distcp"))) == 2  # one shard per rank
    state = load_checkpoint(run)
    assert state["step"] == 6 and state["path"] == str(ckpt_dir)

    model, task = TinyNet(32, 2, 0.0), DigitsTask(make_cfg(run))
    load_model_state(model, state["model"], "FSDP2 checkpoint")
    single = task.evaluate(model.eval(), torch.device("cpu"))
    assert single["val/top1"] == pytest.approx(results["val/top1"])
    assert single["val/loss"] == pytest.approx(results["val/loss"], rel=1e-5)
    load_model_state(model, state["ema"], "FSDP2 checkpoint (EMA)")
    assert task.evaluate(model, torch.device("cpu"))["val/top1"] == pytest.approx(results["val/top1_ema"])

    # The same command with more steps resumes from the shards and matches the DDP run (same data
    # shards, seeds and math; only reduction order differs).
    torchrun(run, "trainer.distributed=fsdp", "trainer.max_steps=8", *COMMON)
    assert [r["step"] for r in rows(run) if "train/loss" in r] == [2, 4, 6, 8]
    fsdp, ddp = load_checkpoint(run), load_checkpoint(ddp_run[0] / "checkpoints" / "step_00000008.pt")
    for part in ("model", "ema"):
        for k, v in ddp[part].items():
            torch.testing.assert_close(fsdp[part][k], v, rtol=1e-5, atol=1e-6, msg=f"{part}.{k}")
