"""Preemption signals (SIGTERM, SIGUSR1, SIGUSR2): checkpoint at the next step boundary, then hand over.

The handler only sets a flag. The training loop polls it at step boundaries, writes a checkpoint, and
calls :meth:`PreemptionHandler.hand_over`: the Python handler installed before ours runs (submitit's
requeues the job); then, or at once when there was none, the process exits with
:data:`PREEMPTED_EXIT_CODE`. Handlers can only be installed from the main thread; elsewhere the
object installs nothing and never reports a request.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType

# Exit status after a checkpoint forced by a signal: 75 is EX_TEMPFAIL ("try again later") in
# sysexits.h, distinct from success (0), Python errors (1) and signal deaths (128 + n).
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader: SLURM signals the whole process group, and a worker that
    died of it would take the run down before the trainer could checkpoint; workers leave the signals
    to the trainer, which stops them after its checkpoint."""
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class PreemptionHandler:
    """Installs flag-setting handlers for ``signals``; ``restore()`` puts the previous ones back."""

    def __init__(self, signals: Iterable[signal.Signals] = PREEMPTION_SIGNALS) -> None:
        self.signum: int | None = None
        main = threading.current_thread() is threading.main_thread()
        self._previous = {s: signal.signal(s, self._on_signal) for s in signals} if main else {}
        self._installed = bool(self._previous)

    @property
    def requested(self) -> bool:
        """True once one of the signals has arrived."""
        return self.signum is not None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def restore(self) -> None:
        """Reinstall the handlers that were in place before this object was created (idempotent)."""
        if self._installed:
            for s, previous in self._previous.items():
                signal.signal(s, previous)
            self._installed = False

    def hand_over(self) -> None:
        """After the checkpoint: call the previous Python handler of the received signal if there was
        one; exit with :data:`PREEMPTED_EXIT_CODE` unless that handler already ended the process."""
        previous = self._previous.get(self.signum)
        self.restore()
        if callable(previous):
            previous(self.signum, None)
        sys.exit(PREEMPTED_EXIT_CODE)
