"""LLaMA under FSDP2 on 2 CPU processes (gloo): a run killed after a checkpoint resumes onto the loss
curve of an uninterrupted run.

torchrun's worker is ``tests/killed_run.py``: it composes ``train.yaml`` with the given overrides and
trains the LM task, SIGKILLing itself after the optimizer step given first (0: never).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_helpers import ENV
from tests.killed_run import WORKER

ROOT = Path(__file__).resolve().parents[1]
STEPS, CKPT_EVERY, KILL_AT = 8, 3, 5  # killed after step 5; the step-3 checkpoint is the resume point


def compose_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose("train", overrides=overrides)


def overrides(run: Path, cache: Path) -> list[str]:
    return [
        "experiment=llama_tiny_stdlib",
        "norm=dyt",
        "norm.impl=eager",
        f"run_dir={run}",
        f"data.cache_dir={cache}",
        "trainer.device=cpu",
        "trainer.distributed=fsdp",
        f"trainer.max_steps={STEPS}",
        f"trainer.ckpt_every_steps={CKPT_EVERY}",
        "trainer.log_every_steps=1",
        "trainer.eval_every_steps=null",
        "trainer.global_batch=8",
        "trainer.progress=off",
        "task.eval_max_sequences=8",
    ]


def torchrun(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER]
    return subprocess.run(
        [*cmd, str(kill_at or 0), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_run_killed_and_resumed_matches_an_uninterrupted_run(tmp_path):
    from dyt.data.text import build_text_dataset
    from dyt.engine.checkpoint import latest_checkpoint

    cache = tmp_path / "cache"
    data_cfg = compose_cfg(overrides(tmp_path / "x", cache)).data
    for split in ("train", "val"):  # built once here, not raced by the runs
        build_text_dataset(data_cfg, split)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = torchrun(overrides(whole, cache))
    assert done.returncode == 0, done.stderr[-3000:]
    first = torchrun(overrides(killed, cache), kill_at=KILL_AT)
    assert first.returncode != 0 and not (killed / "results.json").exists()
    newest = latest_checkpoint(killed / "checkpoints")
    assert newest.name == f"step_{CKPT_EVERY:08d}" and newest.is_dir()  # a sharded DCP checkpoint
    resumed = torchrun(overrides(killed, cache))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = losses(whole)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert losses(killed) == reference  # bit-identical, steps 1-3 before the kill and 4-8 after resume
    final = [json.loads((run / "results.json").read_text())["val/loss"] for run in (whole, killed)]
    assert final[0] == final[1]
