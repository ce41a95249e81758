"""The std of every point-wise norm's input during training: the other half of paper Fig. 8.

Paper Sec. 6.2 records, for DyT layers of ViT-B, ``alpha`` and ``1/std`` of the layer's input at the end
of each epoch, and finds that they move together (Fig. 8 left) and that the final ``alpha`` of every
layer correlates with ``1/std`` (Fig. 8 right). The trainer logs ``alpha/<layer>`` at every log step
(``dyt.nn.probes.alpha_stats``); :class:`InputStdProbe` adds ``input_std/<layer>``, the std over all
elements of the input that layer saw, for the same layers (found by class, ``PointwiseNorm``).

Use it in a training loop (the trainer, or a task's ``training_step``)::

    probe = InputStdProbe(model, every_steps=100)       # None or 0: never records, costs nothing
    with probe.recording(step):                          # forward hooks only on due steps
        loss = model(batch) ...                          # every micro-batch of the step counts
    if row := probe.collect():                           # {"input_std/<layer>": ...} or {}
        log(step, row)

or once on a given model and batch: :func:`input_std`. Under DDP/FSDP each rank measures its own
micro-batches (no collective): the std of one rank's batch, as the paper's per-epoch estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from dyt.analysis.capture import forward_eval
from dyt.nn.probes import pointwise_norms


class InputStdProbe:
    """Records ``std`` of each point-wise norm's input on every ``every_steps``-th step (see module doc)."""

    def __init__(self, model: nn.Module, every_steps: int | None) -> None:
        if every_steps is not None and every_steps < 0:
            raise ValueError(f"every_steps must be a positive number of steps, or None/0 for off; got {every_steps}")
        self.model, self.every_steps = model, every_steps or 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    @contextlib.contextmanager
    def recording(self, step: int) -> Iterator[None]:
        """Hooks on every point-wise norm for the body when ``step`` is due; otherwise nothing at all."""
        if not self.due(step):
            yield
            return
        handles = [m.register_forward_hook(self._hook(name)) for name, m in pointwise_norms(self.model)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, out: Any) -> None:
            std = args[0].detach().float().std().item()
            self._sums[name] = self._sums.get(name, 0.0) + std
            self._counts[name] = self._counts.get(name, 0) + 1

        return fn

    def collect(self) -> dict[str, float]:
        """``{"input_std/<layer>": mean std over the recorded forward passes}``, then forget them; ``{}``
        when nothing was recorded since the last call."""
        row = {f"input_std/{name}": total / self._counts[name] for name, total in self._sums.items()}
        self._sums, self._counts = {}, {}
        return row


def input_std(model: nn.Module, run: Callable[[nn.Module], Any] | Any) -> dict[str, float]:
    """``{"input_std/<layer>": std}`` of every point-wise norm's input on one forward pass in eval mode
    (``run``: the batch, or a function doing the forward pass); the mode is restored afterwards."""
    probe = InputStdProbe(model, every_steps=1)
    with probe.recording(0):
        forward_eval(model, run)
    return probe.collect()
