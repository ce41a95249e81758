"""End to end through the entry points: train.py trains, resumes and sweeps; eval.py evaluates and tabulates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
}


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_resume_and_evaluate_a_run(tmp_path):
    run_dir = tmp_path / "run"
    short = ["trainer.epochs=4", f"run_dir={run_dir}"]
    out = _run("train.py", *short).stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["val/top1"] > 30, f"4 epochs of digits should beat chance (10%) by far: {results}"
    assert results["norm"] == "dyt" and results["steps"] == 4 * 22, "the quickstart is DyT, 22 steps an epoch"
    assert "final metrics" in out
    rows = _metrics(run_dir)
    assert any("train/loss" in r and "alpha/mean" in r for r in rows), "alpha is tracked (paper Fig. 8)"
    assert (run_dir / "config.yaml").exists() and any((run_dir / "checkpoints").iterdir())

    # The same command again finds the finished run and does not train it twice.
    _run("train.py", *short)
    assert json.loads((run_dir / "results.json").read_text())["val/top1"] == results["val/top1"]
    assert len(_metrics(run_dir)) == len(rows) or _metrics(run_dir)[: len(rows)] == rows

    # Longer training resumes from the checkpoint and continues the step count.
    _run("train.py", "trainer.epochs=5", "trainer.accept_changes=[trainer.epochs]", f"run_dir={run_dir}")
    steps = [r["step"] for r in _metrics(run_dir) if "train/loss" in r]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), "no step is logged twice after resume"

    # eval.py re-evaluates the last checkpoint with the run's own config and writes its metrics into
    # results.json: they agree with training's last evaluation.
    final = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**final, "val/top1": -1.0}))
    _run("eval.py", f"run={run_dir}")
    assert json.loads((run_dir / "results.json").read_text())["val/top1"] == pytest.approx(final["val/top1"])


@pytest.mark.slow
def test_norm_sweep_then_table(tmp_path):
    runs = tmp_path / "runs"
    _run(
        "train.py",
        "-m",
        "norm=layernorm,dyt",
        "trainer.epochs=1",
        f"run_dir={runs}/quickstart/${{norm.tag}}/seed0",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    for norm in ("layernorm", "dyt"):
        assert (runs / "quickstart" / norm / "seed0" / "results.json").exists()
    out = _run("eval.py", f"runs_root={runs}", f"out_dir={tmp_path}/results").stdout
    assert "| quickstart (vit_digits) [22 steps] |" in out and "| layernorm | dyt | dyt − layernorm |" in out
    assert (tmp_path / "results" / "experiments_val_top1.md").exists()
    assert (tmp_path / "results" / "figures" / "quickstart_curves.png").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_torchrun_quickstart_resumes_in_one_process(tmp_path):
    run_dir = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561"]
    proc = subprocess.run(
        [*torchrun, "train.py", "trainer.epochs=1", f"run_dir={run_dir}"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two_proc = json.loads((run_dir / "results.json").read_text())
    assert (two_proc["world_size"], two_proc["global_batch"], two_proc["steps"]) == (2, 64, 22), (
        "the recipe's global batch, not 2 x 64"
    )
    # The 2-rank checkpoint resumes in a single process and keeps training (22 steps per epoch now).
    _run("train.py", "trainer.epochs=2", "trainer.accept_changes=[trainer.epochs]", f"run_dir={run_dir}")
    one_proc = json.loads((run_dir / "results.json").read_text())
    assert (one_proc["world_size"], one_proc["steps"]) == (1, 44)
    assert "val/top1" in one_proc


def test_bad_input_fails_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "model=vit_huge", f"run_dir={tmp_path}"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "vit_b" in proc.stderr, "an unknown model lists the valid ones"
    proc = subprocess.run(
        [sys.executable, "train.py", "data=imagenet", f"data.root={tmp_path}/nope", f"run_dir={tmp_path}/r"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "ImageFolder tree" in proc.stdout + proc.stderr
