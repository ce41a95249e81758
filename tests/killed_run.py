"""The kill-and-resume scaffold of the training tests: train ``train.yaml`` composed with some overrides
in a fresh process whose task SIGKILLs it right after optimizer step ``k`` (as ``kill -9`` or the OOM
killer would), so that a test can run the same command again and compare it with an uninterrupted run.

Run as a script (``python tests/killed_run.py K OVERRIDE...``, or as torchrun's worker) it is that
process: it builds the task that ``task._target_`` names, subclassed so that its
``after_optimizer_step`` kills the process after step ``K`` (``K = 0``: never), and trains it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).resolve())


def run_killed(overrides: list[str], kill_at: int, timeout: int = 300) -> None:
    """Train ``overrides`` in a fresh process killed with SIGKILL after optimizer step ``kill_at`` and
    check that it died so (its stderr tail is the failure message otherwise)."""
    from tests.engine_helpers import ENV

    cmd = [sys.executable, WORKER, str(kill_at), *overrides]
    died = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]


def _worker(kill_at: int, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from dyt.engine import Trainer

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("train", overrides=overrides)

    class Killed(get_class(cfg.task._target_)):
        def after_optimizer_step(self, model, info) -> None:
            super().after_optimizer_step(model, info)
            if info.step + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    Trainer(cfg).fit(Killed(cfg))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: avoids gloo's exit-time SIGABRT race under torchrun


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _worker(int(sys.argv[1]), sys.argv[2:])
