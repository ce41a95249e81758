"""A lock per run dir: a second process is refused with the holder named; kill -9 frees the lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dyt.engine.runlock import RunLockedError, acquire_run_lock

REPO = Path(__file__).resolve().parents[1]
# Loads runlock.py by path: importing the dyt package would import torch, seconds on a busy machine.
HOLDER = (
    "import importlib.util as u, sys, time; s = u.spec_from_file_location('runlock', sys.argv[2]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); m.acquire_run_lock(sys.argv[1]); "
    "print('locked', flush=True); time.sleep(60)"
)


def start_holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), str(REPO / "dyt/engine/runlock.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_until_the_holder_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        with pytest.raises(RunLockedError) as info:
            acquire_run_lock(run_dir)
        message = str(info.value)
        assert f"run dir {run_dir} is in use by pid {holder.pid} on host {socket.gethostname()} since " in message
        assert "run_dir=" in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with acquire_run_lock(run_dir) as lock:  # the kernel released the dead holder's lock
        assert lock.held
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            acquire_run_lock(run_dir)  # also another open of the file within one process
    acquire_run_lock(run_dir).release()  # released on leaving the block
