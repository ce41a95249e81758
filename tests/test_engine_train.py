"""Training runs of the tiny digits task: metrics.jsonl, gradient accumulation, NaN guard, preemption
signals, and kill -9 + resume ending bit-identical to an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dyt.engine import PREEMPTED_EXIT_CODE, NonFiniteLossError, Trainer, load_checkpoint
from dyt.engine.checkpoint import latest_checkpoint
from dyt.engine.sampler import seed_all
from tests.engine_helpers import ENV, DigitsTask, ToyDinoTask, make_cfg

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def fit(run_dir: Path, *overrides: str) -> dict:
    cfg = make_cfg(run_dir, list(overrides))
    return Trainer(cfg).fit(DigitsTask(cfg))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_metrics_results_and_config_of_a_run(tmp_path):
    run = tmp_path / "run"
    results = fit(run, "trainer.epochs=2", "trainer.log_every_steps=8", "trainer.ema_decay=0.9")
    lines = rows(run)
    train = [r for r in lines if "train/loss" in r]
    evals = [r for r in lines if "val/top1" in r]
    assert [r["step"] for r in train] == [8, 16, 24, 32, 40, 48, 56, 64]  # 1024 // 32 = 32 steps per epoch
    assert [(r["step"], r["epoch"]) for r in evals] == [(32, 1), (64, 2)]
    for key in ("train/lr", "train/grad_norm", "train/samples_per_s", "train/acc", "alpha/mean"):
        assert all(key in r for r in train), key
    assert all(r["alpha/mean"] != 0.5 for r in train)  # alpha (init 0.5) is learnt
    assert all("val/top1_ema" in r and "val/loss_ema" in r for r in evals)
    assert train[-1]["train/loss"] < train[0]["train/loss"] and evals[-1]["val/top1"] > 50
    saved = json.loads((run / "results.json").read_text())
    assert saved == results
    assert saved["val/top1"] == evals[-1]["val/top1"] and saved["steps"] == 64 and saved["epochs"] == 2
    assert {"experiment", "model", "norm", "seed", "wall_time_s", "val/top1_ema"} <= set(saved)
    assert "max_steps: null" in (run / "config.yaml").read_text()
    again = fit(run, "trainer.epochs=2", "trainer.log_every_steps=8", "trainer.ema_decay=0.9")
    assert rows(run) == lines and {k: v for k, v in again.items() if k != "wall_time_s"} == {
        k: v for k, v in results.items() if k != "wall_time_s"
    }  # a finished run re-run changes nothing


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    common = ("trainer.max_steps=6", "optim.schedule.warmup_steps=2")
    fit(tmp_path / "a", "trainer.global_batch=32", "trainer.micro_batch=16", *common)  # 2 micro-batches
    fit(tmp_path / "b", "trainer.global_batch=32", *common)
    a, b = (load_checkpoint(tmp_path / name)["model"] for name in ("a", "b"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(a["head.weight"], load_checkpoint(tmp_path / "a")["optimizer"]["state"][0]["exp_avg"])


def test_clipping_and_time_based_checkpoints(tmp_path):
    fit(tmp_path / "free", "trainer.max_steps=3")
    fit(
        tmp_path / "clipped",
        "trainer.max_steps=3",
        "trainer.clip_grad=1e-12",
        "trainer.ckpt_every_minutes=0",
        "trainer.keep_checkpoints=5",
    )
    # ckpt_every_minutes=0: the timer is due after every step.
    assert sorted(p.name for p in (tmp_path / "clipped" / "checkpoints").glob("step_*.pt")) == [
        "step_00000001.pt",
        "step_00000002.pt",
        "step_00000003.pt",
    ]
    seed_all(0)  # the initial weights of fit() with seed 0
    init = DigitsTask(make_cfg(tmp_path)).build_model().state_dict()
    moved = {
        name: (load_checkpoint(tmp_path / name)["model"]["head.weight"] - init["head.weight"]).abs().max()
        for name in ("free", "clipped")
    }
    assert moved["clipped"] < 1e-2 * moved["free"]  # gradients ~1e-12 are swamped by AdamW's eps 1e-8


def test_results_do_not_depend_on_num_workers(tmp_path):
    args = ("trainer.max_steps=4", "task.noise=0.2")  # noise: item-level randomness
    fit(tmp_path / "w0", *args, "trainer.num_workers=0")
    fit(tmp_path / "w2", *args, "trainer.num_workers=2")
    a, b = (load_checkpoint(tmp_path / n)["model"] for n in ("w0", "w2"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="at step 5 .*step_00000003.pt"):
        fit(run, "trainer.max_steps=10", "trainer.ckpt_every_steps=3", "task.nan_at_step=5")
    assert latest_checkpoint(run / "checkpoints").name == "step_00000003.pt"
    assert all(r["step"] < 5 for r in rows(run))


def test_sigterm_checkpoints_at_the_next_step_and_exits_with_the_preemption_code(tmp_path):
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        fit(run, "trainer.max_steps=20", "task.signal_at_step=5")
    assert exit_info.value.code == PREEMPTED_EXIT_CODE
    assert load_checkpoint(run)["step"] == 6  # flag read at the step boundary after the signal
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert not (run / "results.json").exists()
    # The same command without the fault injection resumes (told that the task key changed on purpose).
    assert fit(run, "trainer.max_steps=20", "trainer.accept_changes=[task.signal_at_step]")["steps"] == 20


def _driver(run: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "tests/engine_driver.py", str(run), *overrides],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_kill_9_then_same_command_resumes_bit_identically(tmp_path):
    args = (
        "trainer.epochs=2",
        "trainer.ckpt_every_steps=12",
        "trainer.ema_decay=0.9",
        "task.noise=0.1",
        "model.dropout=0.1",
        "trainer.log_every_steps=4",
    )
    reference = tmp_path / "reference"
    fit(reference, *args)
    run = tmp_path / "run"
    # Checkpoints are written at steps 12, 24, 32 (epoch end), 36, 48, 60, 64. SIGKILL halfway through
    # writing the 3rd one (step 32): the run must come back from step 24, skipping the partial file.
    died = _driver(run, *args, env={"DYT_TEST_KILL_IN_CKPT_WRITE": "3"})
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert any(p.name.startswith(".step_00000032.pt.tmp") for p in (run / "checkpoints").iterdir())
    assert latest_checkpoint(run / "checkpoints").name == "step_00000024.pt"
    # Then SIGKILL mid-epoch, right after step 41 (last complete checkpoint: step 36).
    died = _driver(run, *args, env={"DYT_TEST_KILL_AT_STEP": "41"})
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert latest_checkpoint(run / "checkpoints").name == "step_00000036.pt"
    fit(run, *args)  # the same configuration again (in-process: saves a subprocess start)

    ours, ref = load_checkpoint(run), load_checkpoint(reference)
    assert ours["step"] == ref["step"] == 64
    for part in ("model", "ema"):
        for k, v in ref[part].items():
            assert torch.equal(ours[part][k], v), f"{part}.{k} differs from the uninterrupted run"

    def strip(r: list[dict]) -> list[dict]:
        return [{k: v for k, v in x.items() if not k.endswith("_per_s")} for x in r]  # wall-clock rates

    assert strip(rows(run)) == strip(rows(reference))  # no duplicated or missing lines either


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, capsys):
    args = ("trainer.max_steps=4", "model.dropout=0.1", "trainer.progress=log", "trainer.log_every_steps=2")
    fit(tmp_path / "plain", *args)
    assert "[step 4/4 epoch 0" in capsys.readouterr().out  # log lines when stdout is not a TTY
    fit(tmp_path / "ckpt", *args, "trainer.activation_checkpointing=true")
    plain, recomputed = (load_checkpoint(tmp_path / n)["model"] for n in ("plain", "ckpt"))
    assert all(torch.equal(plain[k], recomputed[k]) for k in plain)  # dropout masks replayed exactly


@pytest.mark.slow
def test_wandb_offline_run_is_continued_after_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    args = ("logger.wandb=true", "logger.project=dyt-test")
    fit(run, "trainer.max_steps=2", *args)
    first = load_checkpoint(run)["wandb_id"]
    fit(run, "trainer.max_steps=4", "trainer.accept_changes=[trainer.max_steps]", *args)  # extended on purpose
    assert isinstance(first, str) and load_checkpoint(run)["wandb_id"] == first
    run_dirs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2 and all(name.endswith(f"-{first}") for name in run_dirs)


def test_every_task_hook_survives_kill_9_bit_identically(tmp_path):
    """The DINO-shaped toy task uses every hook (scheduled scalars in a step-aware loss, a hook before the
    optimizer step, task state, its own sampler) plus a weight-decay schedule; killed mid-epoch and
    started again with the same command, it ends bit-identical to an uninterrupted run."""
    args = (
        "task._target_=tests.engine_helpers.ToyDinoTask",
        "trainer.max_steps=14",
        "trainer.global_batch=32",
        "trainer.micro_batch=16",  # 2 micro-batches per step: the resume offset counts micro-batches
        "trainer.ckpt_every_steps=5",
        "trainer.log_every_steps=1",
        "optim.schedules.weight_decay={shape: cosine, start: 0.04, end: 0.4}",
        "model.dropout=0.1",
    )
    reference = tmp_path / "reference"
    fit_task = _fit_target(reference, *args)
    assert fit_task["steps"] == 14
    run = tmp_path / "run"
    died = _driver(run, *args, env={"DYT_TEST_KILL_AT_STEP": "8"})  # last checkpoint: step 5
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert latest_checkpoint(run / "checkpoints").name == "step_00000005.pt"
    _fit_target(run, *args)

    ours, ref = load_checkpoint(run), load_checkpoint(reference)
    assert torch.equal(ours["task"]["center"], ref["task"]["center"]) and ref["task"]["center"].abs().sum() > 0
    for k, v in ref["model"].items():
        assert torch.equal(ours["model"][k], v), k
    logged = rows(reference)
    assert rows(run) == logged or [_strip_rate(r) for r in rows(run)] == [_strip_rate(r) for r in logged]
    wd = [r["sched/weight_decay"] for r in logged if "sched/weight_decay" in r]
    assert wd[0] == pytest.approx(0.04) and wd[-1] > wd[0] and "sched/temperature" in logged[0]
    assert ref["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(wd[-1])
    assert ref["optimizer"]["param_groups"][1]["weight_decay"] == 0.0, "exempt parameters stay exempt"
    # The head's gradients were cancelled for the first 3 steps: AdamW skipped it there (DINO's freeze).
    adam_steps = sorted({int(s["step"]) for s in ref["optimizer"]["state"].values()})
    assert adam_steps == [14 - ToyDinoTask.FREEZE_STEPS, 14]


def _fit_target(run_dir: Path, *overrides: str) -> dict:
    from dyt.tasks import build_task

    cfg = make_cfg(run_dir, list(overrides))
    return Trainer(cfg).fit(build_task(cfg))


def _strip_rate(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.endswith("_per_s")}


def test_nonfinite_gradient_is_caught_before_the_step_and_never_checkpointed(tmp_path):
    """lr=1e6 keeps the loss finite for a step but the gradient norm goes NaN: the guard must look at the
    gradients, and the poisoned state must never reach a checkpoint."""
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="gradient norm|training loss"):
        fit(run, "trainer.max_steps=30", "trainer.ckpt_every_steps=1", "optim.lr=1e6", "optim.schedule.name=constant")
    last = load_checkpoint(run)
    assert all(torch.isfinite(v).all() for v in last["model"].values()), "a non-finite state was checkpointed"


def test_nonfinite_skips_skip_bad_steps_then_stop(tmp_path):
    run = tmp_path / "run"
    fit(run, "trainer.max_steps=6", "task.nan_at_step=5", "trainer.nonfinite_skips=2")  # steps 5 and 6 skipped
    skipped = [r["step"] for r in rows(run) if r.get("train/skipped")]
    assert skipped == [5, 6] and load_checkpoint(run)["nonfinite_skips"] == 2
    with pytest.raises(NonFiniteLossError, match="at step 4 .*nonfinite_skips"):
        fit(tmp_path / "b", "trainer.max_steps=6", "task.nan_at_step=2", "trainer.nonfinite_skips=2")


def test_sigterm_to_the_process_group_with_workers_checkpoints_and_resumes_exactly(tmp_path):
    """SLURM signals every process of the job step: DataLoader workers included. The run must still end
    in a checkpoint and exit 75 (a second signal during the save changes nothing), then resume exactly."""
    args = ("trainer.max_steps=150", "trainer.num_workers=2", "trainer.log_every_steps=1", "task.noise=0.1")
    reference = tmp_path / "reference"
    fit(reference, *args)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "tests/engine_driver.py", str(run), *args],
        cwd=ROOT,
        env=ENV,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    stopped = load_checkpoint(run)["step"]
    assert 0 < stopped < 150
    fit(run, *args)
    ours, ref = load_checkpoint(run), load_checkpoint(reference)
    assert all(torch.equal(ours["model"][k], v) for k, v in ref["model"].items())
    assert [_strip_rate(r) for r in rows(run)] == [_strip_rate(r) for r in rows(reference)]


def test_scale_probes_and_a_diverged_run_are_recorded(tmp_path):
    run = tmp_path / "run"
    fit(run, "trainer.max_steps=4", "trainer.probe_every_steps=2", "trainer.log_every_steps=4")
    probed = [r for r in rows(run) if any(k.startswith("input_std/") for k in r)]
    assert [r["step"] for r in probed] == [2, 4]  # on steps 2 and 4; step 4's probes join its log row
    assert "train/loss" in probed[1] and "train/loss" not in probed[0]
    for key in ("input_std/", "scale/", "saturated/"):
        assert all(len([k for k in r if k.startswith(key)]) == 2 for r in probed), key  # two DyT layers
    assert all("alpha/mean" in r for r in probed)
    default = tmp_path / "default"  # probe_every_steps null: at the logging cadence
    fit(default, "trainer.max_steps=4", "trainer.log_every_steps=2")
    assert [r["step"] for r in rows(default) if any(k.startswith("scale/") for k in r)] == [2, 4]
    off = tmp_path / "off"
    fit(off, "trainer.max_steps=2", "trainer.log_every_steps=1", "trainer.probe_every_steps=0")
    assert not [k for r in rows(off) for k in r if k.startswith("scale/")]
    with pytest.raises(NonFiniteLossError):
        fit(tmp_path / "nan", "trainer.max_steps=6", "task.nan_at_step=4")
    results = json.loads((tmp_path / "nan" / "results.json").read_text())
    assert results["diverged_at_step"] == 4 and results["steps"] == 3  # paper Table 7: "-> failed"


def test_sgd_with_a_step_schedule_resumes_exactly(tmp_path):
    """The momentum buffers go through the checkpoint and the step decay is a function of the step: a run
    stopped after 5 steps and extended to 8 ends where an uninterrupted 8-step run does."""
    sgd = (
        "optim.name=sgd",
        "optim.betas=null",
        "optim.eps=null",
        "optim.momentum=0.9",
        "optim.nesterov=false",
        "optim.lr=0.1",
        "optim.schedule.name=step",
        "optim.schedule.step_size_steps=3",
        "optim.schedule.decay=0.5",
        "trainer.log_every_steps=1",
    )
    fit(tmp_path / "straight", *sgd, "trainer.max_steps=8")
    fit(tmp_path / "resumed", *sgd, "trainer.max_steps=5")
    fit(tmp_path / "resumed", *sgd, "trainer.max_steps=8", "trainer.accept_changes=[trainer.max_steps]")
    ours, ref = load_checkpoint(tmp_path / "resumed"), load_checkpoint(tmp_path / "straight")
    assert ours["step"] == ref["step"] == 8 and "momentum_buffer" in ref["optimizer"]["state"][0]
    for k, v in ref["model"].items():
        assert torch.equal(ours["model"][k], v), k
    resumed = [r["step"] for r in rows(tmp_path / "resumed") if "train/lr" in r]
    assert resumed == list(range(1, 9)), "steps 6-8 continue the checkpoint of step 5 (no restart)"
    lrs = {r["step"]: r["train/lr"] for r in rows(tmp_path / "straight") if "train/lr" in r}
    assert len(lrs) == 8 and all(lr == pytest.approx(0.1 * 0.5 ** ((step - 1) // 3)) for step, lr in lrs.items()), lrs
