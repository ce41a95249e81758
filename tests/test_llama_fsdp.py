"""LLaMA under FSDP2 on 2 CPU processes (gloo): a run killed after a checkpoint resumes onto the loss
curve of an uninterrupted run.

Run as a script, this file is the torchrun worker: it composes ``train.yaml`` with the given
overrides and trains the LM task, SIGKILLing itself after optimizer step ``$DYT_TEST_KILL_AT_STEP``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
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
    env = {**ENV, **({"DYT_TEST_KILL_AT_STEP": str(kill_at)} if kill_at else {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


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


def _worker() -> None:
    """torchrun entry: train the LM task; SIGKILL this process after step $DYT_TEST_KILL_AT_STEP."""
    sys.path.insert(0, str(ROOT))
    from dyt.engine import Trainer
    from dyt.tasks.lm import LanguageModelingTask

    kill_at = int(os.environ.get("DYT_TEST_KILL_AT_STEP", 0))

    class KilledLM(LanguageModelingTask):
        def after_optimizer_step(self, model, info) -> None:
            if info.step + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = compose_cfg(sys.argv[1:])
    Trainer(cfg).fit(KilledLM(cfg))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: avoids gloo's exit-time SIGABRT race


if __name__ == "__main__":
    _worker()
