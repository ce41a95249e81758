"""torchrun with the workers' own errors: ``python -m dyt.launch [torchrun options] train.py [overrides]``.

The launch is torch.distributed.run's own (``torch/distributed/run.py``): the same options, rendezvous,
elastic restarts, signal forwarding and log files. Only a failure reads differently. torchrun ends a
failed launch with its own traceback and a report block per rank (some 40 lines under the one line
that said what was wrong); this launcher prints instead:

- the workers' ``error:`` lines, once: ranks that fail alike give one line, ranks that fail differently
  are named (``error: rank 1: ...``). Rank 0 prints its own line as it fails
  (:func:`dyt.preflight.exit_with_error`), so only the errors it did not print are added;
- for a worker that died without one (a signal, an out-of-memory kill, a crash, a Python traceback):
  one line naming the rank, its exit code or signal and where its output is.

The exit status is the failed worker's (128 + n for a death by signal n). ``DYT_DEBUG=1`` runs
torchrun unchanged, its report included. With several nodes, each node's launcher reports its own ranks.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from dyt.preflight import DEBUG_ENV

PROG = "python -m dyt.launch"
ERROR = "error: "
# What torchrun logs as a launch fails, each said again in this launcher's one line: the stop of the
# other workers and the first failure's exit code (torch/distributed/elastic/multiprocessing/api.py),
# a signal to the launcher (torch/distributed/elastic/agent/server/api.py).
_SAID_AGAIN = {
    "torch.distributed.elastic.multiprocessing.api": ("Sending process %s closing signal", "failed (exitcode: %s)"),
    "torch.distributed.elastic.agent.server.api": ("Received %s death signal",),
}
# Signals that end a process in native code, not from outside.
_CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


def parse(argv: Sequence[str]) -> Namespace:
    """torchrun's command line (its own parser), shown as this launcher's."""
    parser = torchrun.get_args_parser()
    parser.prog = PROG
    parser.description = __doc__.split("\n\n")[1]
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get(DEBUG_ENV):
        torchrun.main(argv)
        return 0
    args = parse(argv)
    if not (args.module or args.no_python or args.run_path) and not Path(args.training_script).is_file():
        where = "the script each process runs, e.g. train.py from the repository root"
        print(f"{ERROR}{args.training_script} is not a file: give the path of {where}", file=sys.stderr)
        return 2
    # torchrun makes this same temporary directory when --log-dir is not given; made here, its path is known.
    args.log_dir = args.log_dir or tempfile.mkdtemp(prefix="torchelastic_")
    for name, said in _SAID_AGAIN.items():
        logging.getLogger(name).addFilter(lambda record, said=said: not str(record.msg).startswith(said))
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        lines, status = report(e.failures, args)
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        return status
    except SignalException as e:
        print(
            f"stopped: the launcher received {e.sigval.name} and passed it on to the workers "
            "(the trainer checkpoints on SIGTERM, SIGUSR1 and SIGUSR2)",
            file=sys.stderr,
        )
        return 128 + e.sigval
    return 0


def report(failures: dict[int, ProcessFailure], args: Namespace) -> tuple[list[str], int]:
    """The lines that say why a launch failed (none when rank 0 printed them already) and its exit status.

    ``failures`` maps global ranks to torchrun's records of the local workers that failed, the first
    to fail first (the others were stopped after it, or failed at the same time)."""
    told = {rank: _message(f) for rank, f in failures.items() if Path(f.error_file).is_file()}
    if told:
        by_message: dict[str, list[int]] = {}
        for rank, message in sorted(told.items()):
            by_message.setdefault(message, []).append(rank)
        printed = told.get(0) if told.get(0, "").startswith(ERROR) else None
        lines = [
            _labelled(message, ranks, named=len(by_message) > 1)
            for message, ranks in by_message.items()
            if message != printed
        ]
        return lines, _status(failures[min(told)].exitcode)
    first = next(iter(failures.values()))
    ranks = sorted(rank for rank, f in failures.items() if f.exitcode == first.exitcode)
    stopped = len(failures) - len(ranks)
    return [
        f"{ERROR}{_ranks(ranks)}{_host(args)} {_death(first.exitcode, len(ranks))} without an error line; "
        f"{_output(first.local_rank, args)}"
        + (f"; the other {stopped} failed rank(s) were stopped after it" if stopped else "")
    ], _status(first.exitcode)


def _message(failure: ProcessFailure) -> str:
    """What a worker wrote in its error file (torch's ``ErrorHandler`` nests it in a dict)."""
    message = failure.message
    return str(message.get("message", "") if isinstance(message, dict) else message)


def _labelled(message: str, ranks: list[int], named: bool) -> str:
    """A worker's message as one line to print: its own ``error:`` line (with the ranks when they
    differ), or the first line of an exception torch's ``@record`` wrote for it."""
    if not message.startswith(ERROR):
        first = message.strip().splitlines()[0] if message.strip() else "no message"
        return f"{ERROR}{_ranks(ranks)} failed with {first} (its traceback is above)"
    return f"{ERROR}{_ranks(ranks)}: {message.removeprefix(ERROR)}" if named else message


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _host(args: Namespace) -> str:
    return "" if str(args.nnodes) in ("1", "1:1") else f" on {socket.gethostname()}"


def _death(exitcode: int, count: int) -> str:
    if exitcode >= 0:
        return f"exited with status {exitcode}"
    killed = "was killed" if count == 1 else "were killed"
    try:
        sig = signal.Signals(-exitcode)
    except ValueError:
        return f"{killed} by signal {-exitcode}"
    if sig in _CRASHES:
        why = "a crash in native code"
    elif sig == signal.SIGKILL:
        why = "out of memory (the kernel's OOM killer: see dmesg) or a kill from outside"
    else:
        why = "a signal from outside"
    return f"{killed} by {sig.name} (signal {-exitcode}: {why})"


def _output(local_rank: int, args: Namespace) -> str:
    """Where a worker's output went: its log file, the console above, or nowhere."""
    for name in ("stderr.log", "stdout.log"):  # --redirects / --tee: <log dir>/<run>/attempt_<k>/<local rank>/
        logs = sorted(
            Path(args.log_dir or os.devnull).glob(f"*/attempt_*/{local_rank}/{name}"), key=lambda p: p.stat().st_mtime
        )
        if logs:
            return f"its output is in {logs[-1]}"
    shown = args.local_ranks_filter
    if shown and str(local_rank) not in shown.split(","):
        return "its output was not kept (--local-ranks-filter hid it; --redirects=3 keeps it under --log-dir)"
    return "its output is above"


def _status(exitcode: int) -> int:
    return 128 - exitcode if exitcode < 0 else exitcode


if __name__ == "__main__":
    sys.exit(main())
