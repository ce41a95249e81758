"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch

import dyt.cli  # noqa: F401  (registers the config resolvers that configs/train.yaml uses)


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread, then restore the count. Tiny matmuls are much faster on one
    thread than two on a loaded 2-core machine, and bit-identity with subprocesses started with
    OMP_NUM_THREADS=1 needs the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
