"""The Task interface: everything the trainer knows about an objective.

A task owns the model, its data, its loss and its metrics. The trainer owns everything shared
(devices, distribution, precision, optimizer and schedule, EMA, checkpoints, logging) and calls only
the methods below. Every objective (classification, MAE, DINO, diffusion, language modelling, ...)
is one subclass in ``dyt/tasks/<name>.py``.

Determinism contract (what makes resume exact): ``train_data()`` returns a map-style dataset whose
item ``i`` depends only on ``(i, epoch)`` and the seeds the trainer sets; the trainer shards and
shuffles indices itself and skips the consumed ones on resume. Per-batch randomness inside
``training_step`` (mixup, masking, diffusion timesteps) draws from the global torch RNG, which the
trainer seeds from ``(seed, step, rank)`` before every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


class Task:
    """Base class of every objective. Subclasses implement the four abstract methods."""

    def __init__(self, cfg: Any) -> None:
        # Keep construction cheap (no data loading, no downloads): configs are composed and their
        # models built on the meta device in tests for every recipe.
        self.cfg = cfg

    # ---- required -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The model to train, built with the configured norm factory, on CPU in fp32."""
        raise NotImplementedError

    def train_data(self) -> Dataset:
        """The training set (map-style; see the determinism contract above)."""
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one (micro-)batch already on the device, and scalars to log (``train/`` is prefixed)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics of ``model`` on ``eval_data()`` (called on every rank; reduce across ranks as needed)."""
        raise NotImplementedError

    # ---- optional -------------------------------------------------------------------------------
    def eval_data(self) -> Dataset | None:
        """The evaluation set, or None when the task evaluates otherwise (e.g. by sampling)."""
        return None

    def collate_fn(self) -> Callable | None:
        """A custom ``collate_fn`` for the training loader; None uses PyTorch's default."""
        return None

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups. Default: no weight decay for 1-D parameters (biases, norm
        weights, DyT's alpha) and for parameters a model lists in ``no_weight_decay()``."""
        skip = set(getattr(model, "no_weight_decay", lambda: ())())
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def eval_extra(self, model: nn.Module, device: torch.device, run_dir: Any) -> dict[str, float]:
        """Costly final metrics that only ``eval.py`` computes (FID from samples, lm-eval scores).
        Default: none."""
        return {}

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step (e.g. DINO's teacher update). Default: nothing."""
