"""One process per run dir: an exclusive lock held for the whole run.

Two processes training into one run dir interleave ``metrics.jsonl`` and prune each other's
checkpoints. :func:`acquire_run_lock` takes an ``flock`` on ``<run_dir>/run.lock``: the kernel
releases it when the process ends, however it ends (``kill -9``, node crash on a local disk), so a
stale lock never needs cleaning up. ``flock`` works on local filesystems and on NFS (the Linux client
maps it to NFS byte-range locks); Lustre needs the ``flock`` mount option, and where the filesystem
refuses locks the run goes on with a one-line warning rather than not at all. The file also records
who holds the lock (pid, host, start time), for the error message only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run dir's lock."""


class RunLock:
    """A held run-dir lock; :meth:`release` (or leaving the ``with`` block, or exiting) frees it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    @property
    def held(self) -> bool:
        """False when the filesystem refused locks and the run continues unprotected."""
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """'pid N on host H since T' from the lock file, or a vaguer phrase when it cannot be read."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def acquire_run_lock(run_dir: str | os.PathLike) -> RunLock:
    """Lock ``run_dir`` (created if needed) for this process, or raise :class:`RunLockedError` naming
    the holder. Call once per run, on rank 0, before touching anything in the run dir."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # 0666 & ~umask, like any file the run writes
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run dir {path.parent} is in use by {holder}; wait for it to finish, or give this run its "
                "own run_dir=... (or another seed=...)"
            ) from None
        os.close(fd)
        print(
            f"warning: cannot lock {path} ({e.strerror}: the filesystem refuses locks); "
            "make sure no other process trains into this run dir",
            file=sys.stderr,
            flush=True,
        )
        return RunLock(path, None)
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
    return RunLock(path, fd)
