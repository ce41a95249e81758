"""Sweeps on a real SLURM cluster: Hydra's submitit launcher (``hydra/launcher=slurm``), the sbatch
array script, preemption -> checkpoint -> requeue -> resume, and hard crashes.

Needs the one-node cluster of ``scripts/ci/slurm_up.sh`` (CI starts it); skipped when ``sinfo`` is
missing or the cluster does not answer, unless ``DYT_REQUIRE_SLURM=1``, which turns the skip into a
failure. Every wait has an outer timeout, so a regression fails instead of hanging, and every test
cancels the jobs it submitted. Runs live under pytest's tmp_path, never the repository's runs/.

Final parameters are compared bit for bit. DyT runs there with ``norm.impl=eager``: in one of two
tries with the default fused CPU kernel (Inductor-compiled, cached under /tmp), a preempted and an
uninterrupted run differed by ~1e-7 in 59 of 65 tensors, which no resume on its own reproduced.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dyt.engine.checkpoint import load_checkpoint
from tests.engine_helpers import ENV as TEST_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**TEST_ENV, "WANDB_MODE": "disabled"}  # no W&B at all in these runs
# The quickstart, shortened: a few optimizer steps of the small ViT on digits.
QUICK = ["trainer.max_steps=4", "trainer.global_batch=16", "trainer.log_every_steps=1", "trainer.progress=log"]
# Long enough to signal a run mid-training (~0.1 s a step on CPU), short enough to finish in seconds.
LONG_STEPS = 100
LONG = [
    f"trainer.max_steps={LONG_STEPS}",
    "trainer.global_batch=8",
    "trainer.log_every_steps=1",
    "trainer.progress=log",
]
# hydra/launcher=slurm as a CPU-only cluster needs it: one process, one CPU, no GPU per run.
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=10",
]
SBATCH_CPU = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10"]
SWEEP_TIMEOUT_S = 300
# submitit polls sacct: a killed job fails its sweep in ~20 s.
CRASH_TIMEOUT_S = 60


def _cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None when the cluster answers."""
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo) on PATH; start a cluster with `sudo scripts/ci/slurm_up.sh`"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "the SLURM controller does not answer within 10 s; restart it with scripts/ci/slurm_up.sh"
    if info.returncode != 0:
        return f"the SLURM cluster is down (sinfo: {info.stderr.strip()}); start it with scripts/ci/slurm_up.sh"
    if not {"idle", "mixed", "allocated"} & set(info.stdout.split()):
        return f"no usable SLURM node (states: {info.stdout.split()}); see scripts/ci/slurm_up.sh"
    if acct.returncode != 0:
        # Without accounting submitit cannot see that a job died, and a crashed sweep hangs forever.
        return f"SLURM accounting is off (sacct: {acct.stderr.strip()}); use scripts/ci/slurm_up.sh"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem and os.environ.get("DYT_REQUIRE_SLURM") == "1":
        pytest.fail(f"DYT_REQUIRE_SLURM=1 but {problem}")
    if problem:
        pytest.skip(problem)


@pytest.fixture
def job_name() -> Iterator[str]:
    """A job name unique to this test; its jobs are cancelled afterwards, whatever happened."""
    name = f"dyt_test_{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)


# ---- helpers ----------------------------------------------------------------------------------------
def _hydra_sweep(*overrides: str, sweep_dir: Path, job_name: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        *overrides,
        *LAUNCHER,
        f"hydra.launcher.name={job_name}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = SWEEP_TIMEOUT_S) -> tuple[int, str]:
    """Wait for a sweep process (killing it after ``timeout`` seconds); its status and output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the sweep did not finish within {timeout} s; its output:\n{out[-4000:]}")
    return proc.returncode, out


def _job_ids(job_name: str) -> dict[int, str]:
    """Array index -> job id (``<array>_<index>``, or a plain id for a one-run sweep, index 0) of the
    queued jobs called ``job_name``."""
    out = subprocess.run(
        ["squeue", "-h", f"--name={job_name}", "-o", "%i"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    ids = {}
    for job in out:
        index = job.partition("_")[2]
        if not index or index.isdigit():  # skips pending ranges such as 12_[0-1]
            ids[int(index or 0)] = job
    return ids


def _wait_for_training(run_dir: Path, job_name: str, index: int, timeout: float = 180) -> str:
    """Wait until the run in ``run_dir`` logged an optimizer step; the job id of array task ``index``."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and '"train/loss"' in metrics.read_text():
            jobs = _job_ids(job_name)
            if index in jobs:
                return jobs[index]
        time.sleep(0.2)
    pytest.fail(f"{run_dir} logged no training step within {timeout} s (squeue: {_job_ids(job_name)})")


def _assert_results(*run_dirs: Path, steps: int) -> None:
    for run_dir in run_dirs:
        path = run_dir / "results.json"
        assert path.exists(), f"{run_dir} has no results.json: the run did not finish"
        assert json.loads(path.read_text())["steps"] == steps, f"{path} should report {steps} steps"


def _assert_same_final_state(run_dir: Path, reference: Path) -> None:
    """The last checkpoints of both runs hold identical model and optimizer tensors."""
    got, want = load_checkpoint(run_dir), load_checkpoint(reference)
    assert got["step"] == want["step"]
    assert got["model"].keys() == want["model"].keys()
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"parameter {name} differs after preemption and resume"
    for pid, state in want["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(got["optimizer"]["state"][pid][key], tensor), f"optimizer {key} of {pid} differs"


def _sbatch_array(script_args: list[str], *, norms: str, log_dir: Path, job_name: str) -> str:
    """Submit scripts/slurm/sweep_array.sbatch over ``norms`` x seed 0; the array job's id."""
    env = {**ENV, "NORMS": norms, "SEEDS": "0", "DYT_PYTHON": sys.executable}
    array = f"--array=0-{len(norms.split()) - 1}"
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name={job_name}",
            array,
            *SBATCH_CPU,
            f"--output={log_dir}/%x-%A_%a.out",
            "scripts/slurm/sweep_array.sbatch",
            *script_args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


# Job states after which SLURM may still run the task (a requeued task goes back to PENDING).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "COMPLETING", "CONFIGURING", "SUSPENDED", "RESIZING"}


def _wait_for_array(array_id: str, timeout: float = SWEEP_TIMEOUT_S) -> dict[str, str]:
    """Wait until no task of ``array_id`` is queued, running or requeued, by squeue *and* by accounting
    (a requeued task can be missing from one of them for a moment); each task's final state from sacct."""
    deadline = time.monotonic() + timeout
    while True:
        queue = subprocess.run(["squeue", "-h", "-j", array_id], capture_output=True, text=True, timeout=30)
        rows = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", array_id, "-o", "JobID,State"], capture_output=True, text=True, timeout=30
        ).stdout.split("\n")
        states = dict(row.split("|", 1) for row in rows if "|" in row)
        active = {state.split()[0] for state in states.values()} & ACTIVE_STATES
        if queue.returncode == 0 and not queue.stdout.strip() and states and not active:
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"array job {array_id} not finished after {timeout} s (sacct: {states})")
        time.sleep(0.5)


# ---- tests ------------------------------------------------------------------------------------------
def test_hydra_slurm_sweep_trains_every_norm(tmp_path, job_name):
    runs = tmp_path / "runs"
    proc = _hydra_sweep(
        "norm=layernorm,dyt", *QUICK, f"run_dir={runs}/${{norm.tag}}", sweep_dir=tmp_path / "sweep", job_name=job_name
    )
    rc, out = _finish(proc)
    assert rc == 0, f"the SLURM sweep failed:\n{out[-4000:]}"
    _assert_results(runs / "layernorm", runs / "dyt", steps=4)
    submission = next((tmp_path / "sweep" / ".submitit").glob("*/*_submission.sh")).read_text()
    for flag in ("--requeue", "--signal=USR2@120", "--open-mode=append"):
        assert flag in submission, f"the submitit job script lacks {flag}"


def test_preempted_hydra_job_requeues_and_matches_uninterrupted_run(tmp_path, job_name):
    # Two identical runs in one sweep; the first is preempted mid-training as a scheduler would
    # (SIGUSR2 to every process of the job step, DataLoader workers included, and a second signal while
    # the checkpoint is being written), the second runs through as the reference.
    runs = tmp_path / "runs"
    # impl=eager: exact torch.tanh, see the note on DyT's fused CPU kernel in the module docstring.
    proc = _hydra_sweep(
        f"run_dir={runs}/preempted,{runs}/reference",
        "norm=dyt",
        "norm.impl=eager",
        "trainer.num_workers=2",
        *LONG,
        sweep_dir=tmp_path / "sweep",
        job_name=job_name,
    )
    job = _wait_for_training(runs / "preempted", job_name, index=0)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    subprocess.run(["scancel", "--signal=USR2", job], check=False, timeout=30)  # arrives before the step ends
    rc, out = _finish(proc)
    assert rc == 0, f"the sweep with a preempted job failed:\n{out[-4000:]}"
    log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob(f"{job}/*_0_log.out"))
    assert "checkpoint written at step" in log, f"the run was not stopped by the signal:\n{log[-3000:]}"
    assert log.count("Starting with JobEnvironment") == 2, f"the job was not requeued exactly once:\n{log[-3000:]}"
    _assert_results(runs / "preempted", runs / "reference", steps=LONG_STEPS)
    _assert_same_final_state(runs / "preempted", runs / "reference")


def test_sbatch_array_sweep_trains_every_norm_and_resumes_a_preempted_task(tmp_path, job_name):
    # Tasks 0 and 1 train the same layernorm run in two dirs, task 2 the dyt run. Task 0 gets SIGUSR1
    # in its batch shell mid-training, as `#SBATCH --signal=B:USR1@...` delivers it before the time
    # limit; task 1 runs through as its reference.
    runs = tmp_path / "runs"
    task_dir = f"run_dir={runs}/task${{oc.env:SLURM_ARRAY_TASK_ID}}"
    array = _sbatch_array([*LONG, task_dir], norms="layernorm layernorm dyt", log_dir=tmp_path, job_name=job_name)
    job = _wait_for_training(runs / "task0", job_name, index=0)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    states = _wait_for_array(array)
    log = next(tmp_path.glob("*_0.out")).read_text()
    assert set(states.values()) == {"COMPLETED"}, f"array tasks ended {states}; task 0's log:\n{log[-4000:]}"
    assert "checkpoint written at step" in log, f"task 0 was not stopped by the signal:\n{log[-3000:]}"
    assert "requeueing job" in log and "restart 1" in log, f"task 0 was not requeued:\n{log[-3000:]}"
    assert [json.loads((runs / f"task{i}" / "results.json").read_text())["norm"] for i in range(3)] == [
        "layernorm",
        "layernorm",
        "dyt",
    ]
    _assert_results(runs / "task0", runs / "task1", runs / "task2", steps=LONG_STEPS)
    _assert_same_final_state(runs / "task0", runs / "task1")


def test_hard_crash_fails_the_sweep_quickly(tmp_path, job_name):
    # SIGKILL leaves no result behind (like a segfault or the OOM killer): submitit must learn from
    # accounting that the job failed and fail the sweep instead of waiting for it.
    runs, sweep = tmp_path / "runs", tmp_path / "sweep"
    proc = _hydra_sweep("norm=dyt", *LONG, f"run_dir={runs}/crashed", sweep_dir=sweep, job_name=job_name)
    deadline = time.monotonic() + 180
    while not any("Starting with JobEnvironment" in p.read_text() for p in sweep.glob(".submitit/*/*_log.out")):
        assert time.monotonic() < deadline, "the job's Python process did not start within 180 s"
        time.sleep(0.2)
    job = _job_ids(job_name)[0]
    killed = time.monotonic()
    subprocess.run(["scancel", "--signal=KILL", job], check=True, timeout=30)
    rc, out = _finish(proc, timeout=CRASH_TIMEOUT_S)
    elapsed = time.monotonic() - killed
    assert rc != 0, f"the sweep succeeded although its job was killed:\n{out[-4000:]}"
    assert "FAILED" in out or "CANCELLED" in out, f"the sweep's error does not name the job's state:\n{out[-4000:]}"
    assert not (runs / "crashed" / "results.json").exists()
    print(f"sweep failed {elapsed:.1f} s after its job was killed")


def test_cpu_reproduction_chains_its_two_stages_through_slurm(tmp_path, job_name):
    """scripts/reproduce_cpu.py --launcher slurm on MAE (pretrain, then fine-tune from each norm's own
    pretraining), two steps a stage: every stage runs as a SLURM job, in order, and the table comes out."""
    env = {**ENV, "DYT_SLURM_GPUS_PER_NODE": "0", "DYT_SLURM_TASKS_PER_NODE": "1", "DYT_SLURM_CPUS_PER_TASK": "1"}
    cmd = [
        sys.executable, str(ROOT / "scripts/reproduce_cpu.py"), "--only", "mae", "--seeds", "0", "--norms", "dyt",
        "--launcher", "slurm", "trainer.max_steps=2", "trainer.epochs=1", f"hydra.launcher.name={job_name}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rc, out = _finish(proc)
    assert rc == 0, f"the reproduction failed:\n{out[-4000:]}"
    for norm in ("layernorm", "dyt"):
        finetune = tmp_path / "runs/cpu/mae_digits_finetune" / norm / "seed0"
        assert json.loads((finetune / "results.json").read_text())["steps"] == 2
        source = json.loads((finetune / "init_from.json").read_text())
        assert (source["source"], source["step"]) == (f"runs/cpu/mae_digits/{norm}/seed0", 2)
    assert "| MAE pretrain + fine-tune, digits |" in (tmp_path / "results/cpu/README.md").read_text()
    assert len(list((tmp_path / "runs/_sweeps").rglob("*_submission.sh"))) == 4  # 2 norms x 2 stages, all via SLURM
