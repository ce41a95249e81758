"""``python -m dyt.launch`` (issue 24): torchrun's launch, and a failed one ends in the workers' own error
line, not in torchrun's report.

Two processes on CPU. The training runs of tests/test_engine_distributed.py and tests/test_scale.py go
through this launcher too (their ``launch``), so a good run trains through it. Under plain torchrun the
first test here fails: the same command prints its ``error:`` line, then 40 lines of launcher traceback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from dyt import launch
from dyt.preflight import exit_with_error
from tests.engine_helpers import ENV

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = [sys.executable, "-m", "dyt.launch", "--standalone", "--nproc_per_node=2"]
# A worker that needs no torch: rank 1 dies of SIGKILL, rank 0 waits to be stopped.
KILLED_WORKER = """
import os, pathlib, signal, sys, time
pathlib.Path(sys.argv[1], f"ready{os.environ['RANK']}").touch()
if os.environ["RANK"] == "1" and sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
"""


def start(*args: str) -> subprocess.Popen:
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    env.pop("DYT_DEBUG", None)
    return subprocess.Popen([*LAUNCHER, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, list[str]]:
    """(exit status, the non-empty lines of stderr)."""
    _, err = proc.communicate(timeout=300)
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


def worker(tmp_path: Path) -> str:
    path = tmp_path / "worker.py"
    path.write_text(KILLED_WORKER)
    return str(path)


# ---- end to end -----------------------------------------------------------------------------------------
@pytest.mark.slow  # 3 interpreters import train.py's stack: ~36 s on a loaded 2-core machine
@pytest.mark.distributed
def test_a_global_batch_the_world_cannot_split_is_one_error_line(tmp_path):
    """train.py on 2 processes with a global batch of 65: the worker's line (and its DYT_DEBUG hint), no
    launcher traceback, the worker's exit status, no run dir left behind."""
    run = tmp_path / "run"
    status, err = finish(start("train.py", "trainer.device=cpu", "trainer.global_batch=65", f"run_dir={run}"))
    assert status == 2, err
    assert err[0].startswith("error: trainer.global_batch=65 does not split over 2 processes"), err
    assert err[1:] == ["(set DYT_DEBUG=1 to see the traceback)"], err
    assert not run.exists()


@pytest.mark.distributed
def test_a_worker_killed_by_a_signal_gets_one_line(tmp_path):
    """Rank 1 dies of SIGKILL without a word: one line names it, the signal and where its output is."""
    status, err = finish(start(worker(tmp_path), str(tmp_path), "kill"))
    assert status == 128 + signal.SIGKILL, err
    assert err == [
        "error: rank 1 was killed by SIGKILL (signal 9: out of memory (the kernel's OOM killer: see dmesg) or a "
        "kill from outside) without an error line; its output is above; the other 1 failed rank(s) were stopped "
        "after it"
    ], err


def test_debug_runs_torchrun_itself(monkeypatch):
    """DYT_DEBUG=1: torchrun's own main, its full report included."""
    calls = []
    monkeypatch.setattr(launch.torchrun, "main", calls.append)
    monkeypatch.setenv("DYT_DEBUG", "1")
    assert launch.main(["--nproc_per_node=2", "train.py", "norm=dyt"]) == 0
    assert calls == [["--nproc_per_node=2", "train.py", "norm=dyt"]]


@pytest.mark.distributed
def test_a_signal_to_the_launcher_is_passed_on_and_said_in_one_line(tmp_path):
    """SIGTERM (scancel) to the launcher: torchrun passes it to the workers; one line, status 128 + 15."""
    proc = start(worker(tmp_path), str(tmp_path), "wait")
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    status, err = finish(proc)
    assert status == 128 + signal.SIGTERM, err
    assert err == [
        "stopped: the launcher received SIGTERM and passed it on to the workers "
        "(the trainer checkpoints on SIGTERM, SIGUSR1 and SIGUSR2)"
    ], err


def test_a_missing_script_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DYT_DEBUG", raising=False)
    assert launch.main(["--nproc_per_node=2", str(tmp_path / "trian.py"), "norm=dyt"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path}/trian.py is not a file: give the path of the script each process runs, " + (
        "e.g. train.py from the repository root\n"
    )


# ---- what the launcher makes of the workers' error files ---------------------------------------------------
def failure(tmp_path: Path, rank: int, exitcode: int, message: str | None = None, recorded: bool = False):
    """torchrun's record of a failed worker; ``message``: what it left in its error file (None: nothing)."""
    path = tmp_path / f"error{rank}.json"
    if message is not None and recorded:  # torch's @record writes an exception's type and text
        info = {"py_callstack": "Traceback ...", "timestamp": "1"}
        path.write_text(json.dumps({"message": {"message": message, "extraInfo": info}}))
    elif message is not None:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
            mp.setenv("RANK", "1")  # a rank that does not print: only the file is written
            mp.setenv("TORCHELASTIC_ERROR_FILE", str(path))
            exit_with_error(message)
    return rank, ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(path))


ARGS = launch.parse(["--nproc_per_node=3", "train.py"])
A = "error: data.root=/x does not exist or is not a directory"
B = "error: no checkpoint at /y"


@pytest.mark.parametrize(
    ("failures", "lines", "status"),
    [
        # rank 0 printed its line itself; the others failed alike or were stopped
        ([(0, 2, A), (1, 2, A), (2, -15, None)], [], 2),
        # rank 0 was stopped before it could say it: rank 1's line, once
        ([(1, 2, A), (2, 2, A), (0, -15, None)], [A], 2),
        # ranks that differ from rank 0 are named
        ([(0, 2, A), (1, 2, B), (2, 2, B)], ["error: ranks 1, 2: no checkpoint at /y"], 2),
        ([(1, 2, A), (2, 2, B), (0, -15, None)], ["error: rank 1: " + A[7:], "error: rank 2: " + B[7:]], 2),
        # a Python traceback torch's @record wrote down
        (
            [(1, 1, "RuntimeError: boom\nmore")],
            ["error: rank 1 failed with RuntimeError: boom (its traceback is above)"],
            1,
        ),
        # no word from any rank: the first to fail, its exit status or signal, where its output is
        (
            [(1, 1, None), (0, -15, None)],
            [
                "error: rank 1 exited with status 1 without an error line; its output is above; "
                "the other 1 failed rank(s) were stopped after it"
            ],
            1,
        ),
        (
            [(2, -11, None), (0, -11, None)],
            [
                "error: ranks 0, 2 were killed by SIGSEGV (signal 11: a crash in native code) without an error line; "
                "its output is above"
            ],
            139,
        ),
    ],
)
def test_the_report_of_a_failed_launch(tmp_path, failures, lines, status):
    records = dict(
        failure(tmp_path, rank, code, message, recorded=bool(message) and not message.startswith("error:"))
        for rank, code, message in failures
    )
    assert launch.report(records, ARGS) == (lines, status)


def test_the_report_points_at_the_log_file_of_a_redirected_worker(tmp_path):
    log = tmp_path / "logs" / "run_x" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("")
    args = launch.parse([f"--log-dir={tmp_path / 'logs'}", "--redirects=3", "--nproc_per_node=2", "train.py"])
    lines, _ = launch.report(dict([failure(tmp_path, 1, -9)]), args)
    assert lines[0].endswith(f"without an error line; its output is in {log}"), lines
    hidden = launch.parse(["--local-ranks-filter=0", "--nproc_per_node=2", "train.py"])
    assert (
        "its output was not kept (--local-ranks-filter" in launch.report(dict([failure(tmp_path, 1, -9)]), hidden)[0][0]
    )


def test_a_worker_error_is_printed_by_rank_0_only_and_left_in_the_error_file(tmp_path, capsys, monkeypatch):
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / f"e{rank}.json"))
        with pytest.raises(SystemExit) as info:
            exit_with_error(A)
        assert info.value.code == 2
        record = ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(tmp_path / f"e{rank}.json"))
        assert launch._message(record) == A
    assert capsys.readouterr().err == A + "\n"
