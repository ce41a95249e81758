"""Optimizer and per-iteration learning-rate schedule.

The optimizer is AdamW over ``task.param_groups(model, weight_decay)`` (the task decides which
parameters are exempt from weight decay; the paper's recipes exempt 1-D parameters, DyT's ``alpha``
included). The learning rate is set before every optimizer step from a pure function of the step, so
the schedule needs no state of its own to resume exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SCHEDULES = ("cosine", "constant")
WARMUP_SHAPES = ("linear", "quadratic")


def scaled_lr(optim_cfg: Any, global_batch: int) -> float:
    """Peak lr after the linear scaling rule: ``lr * global_batch / lr_batch_size`` (paper Sec. 8 quotes
    lr 4e-3 at batch 4096); ``lr`` unchanged when ``lr_batch_size`` is null."""
    lr = float(optim_cfg.lr)
    base = optim_cfg.get("lr_batch_size")
    return lr if base is None else lr * global_batch / float(base)


class LRSchedule:
    """Warmup (linear or quadratic) then cosine decay to a floor, or a constant lr after warmup.

    Args:
        peak_lr: lr at the end of warmup.
        total_steps: optimizer steps of the whole run (the cosine reaches its floor there).
        warmup_steps: steps of warmup; lr rises from ``peak_lr / warmup_steps`` at step 0 to ``peak_lr``.
        name: ``cosine`` or ``constant``.
        warmup_shape: ``linear`` or ``quadratic``: ``peak * (1 - (1 - (s+1)/warmup)**2)``, the warmup of
            fms-fsdp that the paper's LLaMA runs use (fast at first, flat at the end).
        min_lr: absolute floor of the cosine, or
        min_lr_ratio: the floor as a fraction of ``peak_lr`` (wins over ``min_lr`` when set).
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        name: str = "cosine",
        warmup_shape: str = "linear",
        min_lr: float = 0.0,
        min_lr_ratio: float | None = None,
    ) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {name!r}; valid choices are: {', '.join(SCHEDULES)}")
        if warmup_shape not in WARMUP_SHAPES:
            raise ValueError(f"unknown warmup_shape {warmup_shape!r}; valid choices are: {', '.join(WARMUP_SHAPES)}")
        self.peak_lr, self.total_steps, self.warmup_steps = peak_lr, max(1, total_steps), max(0, warmup_steps)
        self.name, self.warmup_shape = name, warmup_shape
        self.min_lr = peak_lr * min_lr_ratio if min_lr_ratio is not None else min_lr

    def __call__(self, step: int) -> float:
        """The lr of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            frac = (step + 1) / self.warmup_steps
            return self.peak_lr * (frac if self.warmup_shape == "linear" else 1.0 - (1.0 - frac) ** 2)
        if self.name == "constant":
            return self.peak_lr
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict[str, Any]:
        """The schedule's settings (stored in checkpoints for inspection; resume recomputes from step)."""
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "name": self.name,
            "warmup_shape": self.warmup_shape,
            "min_lr": self.min_lr,
        }


def build_schedule(optim_cfg: Any, peak_lr: float, total_steps: int, steps_per_epoch: int) -> LRSchedule:
    """The schedule of ``optim.schedule``; ``warmup_epochs`` converts to steps with the epoch length."""
    s = optim_cfg.schedule
    warmup = s.get("warmup_steps")
    if warmup is None:
        warmup = round(float(s.get("warmup_epochs", 0)) * steps_per_epoch)
    return LRSchedule(
        peak_lr,
        total_steps,
        int(warmup),
        name=s.get("name", "cosine"),
        warmup_shape=s.get("warmup_shape", "linear"),
        min_lr=float(s.get("min_lr", 0.0)),
        min_lr_ratio=s.get("min_lr_ratio"),
    )


def build_optimizer(optim_cfg: Any, task: Any, model: nn.Module, peak_lr: float) -> torch.optim.Optimizer:
    """AdamW over ``task.param_groups(model, optim.weight_decay)``."""
    if optim_cfg.name != "adamw":
        raise ValueError(f"unknown optimizer {optim_cfg.name!r}; valid choices are: adamw")
    groups = task.param_groups(model, float(optim_cfg.weight_decay))
    groups = [g for g in groups if len(g["params"]) > 0]
    return torch.optim.AdamW(
        groups, lr=peak_lr, betas=tuple(float(b) for b in optim_cfg.betas), eps=float(optim_cfg.eps)
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group (groups may carry an ``lr_scale``, e.g. layer decay)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
