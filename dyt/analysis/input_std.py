"""The std of every point-wise norm's input during training: the other half of paper Fig. 8.

Paper Sec. 6.2 records, for DyT layers of ViT-B, ``alpha`` and ``1/std`` of the layer's input at the end
of each epoch, and finds that they move together (Fig. 8 left) and that the final ``alpha`` of every
layer correlates with ``1/std`` (Fig. 8 right). The trainer logs ``alpha/<layer>`` and, through
:class:`dyt.nn.probes.ScaleProbe`, ``input_std/<layer>`` (with ``scale/`` and ``saturated/``) every
``trainer.probe_every_steps`` steps. :class:`InputStdProbe` is the same probe for a loop of your own,
keeping ``input_std/<layer>`` only::

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
from dyt.nn.probes import ScaleProbe


class InputStdProbe(ScaleProbe):
    """Records ``std`` of each point-wise norm's input on every ``every_steps``-th step (see module doc)."""

    def __init__(self, model: nn.Module, every_steps: int | None) -> None:
        if every_steps is not None and every_steps < 0:
            raise ValueError(f"every_steps must be a positive number of steps, or None/0 for off; got {every_steps}")
        super().__init__(model, keys=("input_std",))
        self.every_steps = every_steps or 0

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    @contextlib.contextmanager
    def recording(self, step: int) -> Iterator[None]:
        """Hooks on every point-wise norm for the body when ``step`` is due; otherwise nothing at all."""
        with super().recording(self.due(step)):
            yield


def input_std(model: nn.Module, run: Callable[[nn.Module], Any] | Any) -> dict[str, float]:
    """``{"input_std/<layer>": std}`` of every point-wise norm's input on one forward pass in eval mode
    (``run``: the batch, or a function doing the forward pass); the mode is restored afterwards."""
    probe = InputStdProbe(model, every_steps=1)
    with probe.recording(0):
        forward_eval(model, run)
    return probe.collect()
