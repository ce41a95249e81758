"""Evaluation, written once: sums over a sharded data set, and the raw + EMA evaluation of a model.

Tasks compute their metrics with :func:`sharded_sums` (every rank takes every ``world``-th item, sums in
float64, one all-reduce: every rank returns the same numbers). The trainer and ``eval.py`` both evaluate
through :func:`evaluate_model`: the raw model's metrics, then the EMA weights' with the suffix ``_ema``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dyt.engine.signals import ignore_preemption_signals


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def sharded_sums(
    dataset: Dataset,
    batch_fn: Callable[[Any], torch.Tensor],
    *,
    batch_size: int,
    device: torch.device,
    size: int | None = None,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
) -> torch.Tensor:
    """``sum(batch_fn(batch) for batch in dataset[:size])`` over every rank, in float64.

    ``batch_fn`` gets a batch already on ``device`` and returns a 1-D tensor of sums (e.g. correct
    predictions, summed loss, item count). Rank ``r`` of ``w`` evaluates items ``r, r + w, ...``;
    the totals are all-reduced, so every rank returns the same tensor.
    """
    rank, world = rank_and_world()
    n = len(dataset) if size is None else min(size, len(dataset))
    if n == 0:
        raise ValueError("the evaluation set is empty: check the data path and split")

    def total(indices: range) -> torch.Tensor | None:
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_fn,
            worker_init_fn=ignore_preemption_signals,
        )
        sums = None
        for batch in loader:
            out = batch_fn(to_device(batch, device)).detach().double()
            sums = out if sums is None else sums + out
        return sums

    totals = total(range(rank, n, world))
    if totals is None:  # more ranks than items: this rank adds zeros of the right length
        totals = total(range(1)) * 0
    if dist.is_initialized():
        dist.all_reduce(totals)
    return totals


def evaluate_model(
    evaluate: Callable[[nn.Module, torch.device], dict[str, float]],
    model: nn.Module,
    device: torch.device,
    ema_weights: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    after_forward: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """``evaluate(model, device)`` on the raw weights and, with ``ema_weights`` (a context manager that
    swaps the EMA weights into ``model``), again with keys suffixed ``_ema``. Runs in eval mode under
    ``no_grad`` and restores the training mode. ``after_forward`` runs after each evaluation (FSDP2 reshards
    there, so that swapping weights reaches the parameters the next forward uses)."""
    after = after_forward or (lambda m: None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = {k: float(v) for k, v in evaluate(model, device).items()}
            after(model)
            if ema_weights is not None:
                with ema_weights():
                    metrics.update({f"{k}_ema": float(v) for k, v in evaluate(model, device).items()})
                    after(model)
    finally:
        model.train(was_training)
    return metrics


@contextlib.contextmanager
def weights_swapped_in(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> Iterator[None]:
    """Within the block ``model`` holds ``state`` (e.g. EMA weights from a checkpoint); its own come back after.
    Keys and shapes are checked first (:func:`~dyt.engine.checkpoint.load_model_state`)."""
    from dyt.engine.checkpoint import load_model_state

    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    load_model_state(model, state, source)
    try:
        yield
    finally:
        model.load_state_dict(backup)
