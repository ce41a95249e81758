"""Exponential moving average of the model's weights (paper Sec. 8: EMA 0.9999 for ImageNet).

The EMA holds one tensor per floating-point entry of the model's ``state_dict`` (parameters and
buffers), in the same layout as the live model (plain tensors under DDP, shards under FSDP2), so it
needs no second module: evaluation swaps the EMA weights into the model and back. Its state dict has
the model's keys, so ``load_checkpoint(...)["ema"]`` loads straight into a freshly built model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class ModelEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every ``every``-th optimizer step.

    Args:
        model: the unwrapped model (its state_dict keys have no ``module.`` prefix).
        decay: EMA decay per update, e.g. 0.9999.
        every: update period in optimizer steps.
    """

    def __init__(self, model: nn.Module, decay: float, every: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.every = float(decay), max(1, int(every))
        live = model.state_dict(keep_vars=True)
        self._live = {k: v for k, v in live.items() if torch.is_floating_point(v)}
        clones: dict[int, torch.Tensor] = {}  # tied weights share one EMA tensor
        self.shadow = {k: clones.setdefault(id(v), v.detach().clone()) for k, v in self._live.items()}

    def _pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seen: set[int] = set()
        for k, shadow in self.shadow.items():
            if id(shadow) not in seen:
                seen.add(id(shadow))
                yield shadow, self._live[k].detach()

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average from the model's current weights (after a change made before training)."""
        for shadow, live in self._pairs():
            shadow.copy_(live)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in; ``step`` is the number of optimizer steps taken so far."""
        if step % self.every:
            return
        for shadow, live in self._pairs():
            shadow.lerp_(live.to(shadow.dtype), 1.0 - self.decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block, the model holds the EMA weights; its own weights come back afterwards."""
        with torch.no_grad():
            backup = [(live, live.clone()) for _, live in self._pairs()]
            for shadow, live in self._pairs():
                live.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for live, saved in backup:
                    live.copy_(saved)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights under the model's state_dict keys."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore EMA weights saved by :meth:`state_dict` (keys must match the model's)."""
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks keys {missing[:10]} (of {len(missing)} missing)")
        for k, v in self.shadow.items():
            v.copy_(state[k])
