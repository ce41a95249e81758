"""What the benchmark scripts share: their dtype names, their clocks and the ``--threads``/``--clock``
options that pick how they time (one thread and the CPU clock are steadier on a shared machine)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (torch.set_num_threads) and ``--clock wall|cpu``."""
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (1 is steadier on a loaded machine)")
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, which other processes on a shared machine "
        "barely disturb (use with --threads 1; GPU work is not counted)",
    )


def apply_timing_options(args: argparse.Namespace) -> Callable[[], float]:
    """Set the thread count ``--threads`` asks for and return the ``--clock`` to time with."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return CLOCKS[args.clock]
