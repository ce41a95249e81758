"""Train the tiny digits task from the command line (used by the kill/resume, signal and torchrun tests).

    python tests/engine_driver.py <run_dir> [dotlist overrides ...]

Fault injection through the environment, so that "the same command" can be re-run:
``DYT_TEST_KILL_IN_CKPT_WRITE=k`` makes the process SIGKILL itself halfway through writing its k-th
checkpoint file (a partial temporary file is left behind); ``DYT_TEST_KILL_AT_STEP=n`` makes it SIGKILL
itself right after optimizer step n; ``DYT_TEST_KILL_IN_ASYNC_WRITE=k`` makes rank 0 SIGKILL itself in the
background thread of its k-th asynchronous checkpoint write, after its shard's file is written and before
the write completes. Prints the results as one JSON line (rank 0).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dyt.engine import Trainer  # noqa: E402
from dyt.tasks import build_task  # noqa: E402
from tests.engine_helpers import make_cfg  # noqa: E402


def kill_during_write(kth: int) -> None:
    """Replace ``torch.save`` by one that dies halfway through its ``kth`` file."""
    real_save, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] < kth:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def kill_during_async_write(kth: int) -> None:
    """Make rank 0 die inside DCP's ``kth`` background write (never in a write on the main thread)."""
    from torch.distributed.checkpoint.filesystem import _FileSystemWriter

    real_write, calls = _FileSystemWriter.write_data, [0]

    def write_data(self, plan, planner):
        written = real_write(self, plan, planner)
        calls[0] += 1
        if calls[0] == kth and threading.current_thread() is not threading.main_thread():
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    _FileSystemWriter.write_data = write_data


def main() -> None:
    cfg = make_cfg(sys.argv[1], sys.argv[2:])
    task = build_task(cfg)
    if os.environ.get("DYT_TEST_KILL_AT_STEP"):  # on the task, not in the config: the command is the same
        task.kill_at_step = int(os.environ["DYT_TEST_KILL_AT_STEP"])
    if os.environ.get("DYT_TEST_KILL_IN_CKPT_WRITE"):
        kill_during_write(int(os.environ["DYT_TEST_KILL_IN_CKPT_WRITE"]))
    if os.environ.get("DYT_TEST_KILL_IN_ASYNC_WRITE") and int(os.environ.get("RANK", 0)) == 0:
        kill_during_async_write(int(os.environ["DYT_TEST_KILL_IN_ASYNC_WRITE"]))
    results = Trainer(cfg).fit(task)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
