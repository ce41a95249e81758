"""The Task interface: everything the trainer knows about an objective.

A task owns the model, its data, its loss and its metrics. The trainer owns everything shared
(devices, distribution, precision, optimizer and schedules, EMA, checkpoints, logging) and calls only
the methods below. Every objective (classification, MAE, DINO, diffusion, language modelling, ...)
is one subclass in ``dyt/tasks/<name>.py``; the contract lives in the engine, the ground floor
the tasks build on.

One optimizer step, as the trainer runs it::

    for micro in range(grad_accum):                 # info = StepInfo(step, epoch, ..., micro, scalars)
        loss, logs = task.training_step(model, batch, info); backward(loss / grad_accum)
    unscale, clip (trainer.clip_grad), NaN guard
    task.before_optimizer_step(model, info)         # e.g. DINO zeroes the last layer's gradients
    optimizer.step(); EMA update
    task.after_optimizer_step(model, info)          # e.g. DINO's teacher update

Schedules: the lr (``optim.schedule``), other optimizer hyperparameters (``optim.schedules``, e.g. weight
decay) and the task's own scalars (:meth:`Task.schedules`, e.g. teacher momentum) are pure functions of
the step (``dyt.engine.schedule``); the trainer evaluates them before every step.

Determinism contract (what makes resume exact): ``train_data()`` returns a map-style dataset whose
item ``i`` depends only on ``(i, epoch)`` and the seeds the trainer sets; the trainer (or the task's
:meth:`Task.batch_sampler`) orders and shards indices as a function of ``(seed, epoch)`` and skips the
consumed batches on resume. Per-batch randomness inside ``training_step`` (mixup, masking, diffusion
timesteps) draws from the global torch RNG, which the trainer seeds from ``(seed, step, micro, rank)``.
State the task keeps across steps (DINO's center) goes through :meth:`Task.state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from dyt.engine.sampler import ResumableBatchSampler


@dataclass(frozen=True)
class StepInfo:
    """Where training stands, as handed to :meth:`Task.training_step` and the step hooks."""

    step: int  # 0-based index of the optimizer step being computed (= optimizer steps done before it)
    epoch: int
    total_steps: int
    steps_per_epoch: int
    micro: int = 0  # micro-batch index within the step (gradient accumulation)
    scalars: Mapping[str, float] = field(default_factory=dict)  # this step's values of Task.schedules()

    @property
    def epoch_float(self) -> float:
        """Epochs done, fractional (``step / steps_per_epoch``)."""
        return self.step / self.steps_per_epoch


class Task:
    """Base class of every objective. Subclasses implement the four abstract methods."""

    #: The metric tables and sweeps report for this task (``results.json`` records it per run).
    headline_metric: str = "val/top1"
    #: ``max`` when higher is better (accuracy), ``min`` otherwise (loss, FID).
    headline_mode: str = "max"
    #: The unit of the logged throughput (``train/<unit>_per_s``): images, tokens, audio samples...
    throughput_unit: str = "samples"
    #: How many of those units one training sample holds (e.g. tokens per sequence).
    units_per_sample: float = 1.0

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

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one (micro-)batch already on the device, and scalars to log (``train/`` is prefixed)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics of ``model`` (called on every rank, in eval mode under ``no_grad``; every rank must return
        the same numbers: reduce with :func:`dyt.engine.evaluation.sharded_sums`)."""
        raise NotImplementedError

    # ---- optional: data -------------------------------------------------------------------------
    def eval_data(self) -> Dataset | None:
        """The evaluation set, or None when the task evaluates otherwise (e.g. by sampling)."""
        return None

    def collate_fn(self) -> Callable | None:
        """A custom ``collate_fn`` for the training loader; None uses PyTorch's default."""
        return None

    def batch_sampler(
        self, dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int
    ) -> ResumableBatchSampler | None:
        """This task's own batch sampler (e.g. audio batched by total samples), or None for the default
        (:class:`~dyt.engine.sampler.ShardedBatchSampler`). ``batch_size`` is per device, in the sampler's
        own unit; the sampler must keep the :class:`~dyt.engine.sampler.ResumableBatchSampler` contract."""
        return None

    def flops_per_sample(self, model: nn.Module) -> float | None:
        """Training FLOPs (forward + backward) of one training sample, for the logged model TFLOP/s and
        MFU (``dyt.engine.flops``). Default: the model's ``flops_per_image()`` when it has one (the
        vision transformers), else None (no FLOPs logged)."""
        count = getattr(model, "flops_per_image", None)
        return float(count()) if callable(count) else None

    # ---- optional: optimization -----------------------------------------------------------------
    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups. Default: no weight decay for 1-D parameters (biases, norm
        weights, DyT's alpha) and for parameters a model lists in ``no_weight_decay()``. With
        ``task.decay_all_params`` every parameter decays, as the paper's upstream code does for LLaMA
        (fms-fsdp ``AdamW(model.parameters())``), wav2vec 2.0 (fairseq's Adam) and the ConvNets of Table 16
        (torchvision's reference ``train.py`` without ``--norm-weight-decay``). A group may set ``lr_scale``
        (layer-wise lr decay) and ``<key>_scale`` for any scheduled hyperparameter."""
        if self.cfg is not None and self.cfg.task.get("decay_all_params", False):
            return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
        skip = set(getattr(model, "no_weight_decay", lambda: ())())
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, Callable[[int], float]]:
        """Per-step schedules of the task's own scalars (name -> value of the step), delivered as
        ``StepInfo.scalars`` and logged as ``sched/<name>``. Build them with
        :func:`dyt.engine.schedule.build_scalar_schedule`. Default: none."""
        return {}

    def probe_forward(self, model: nn.Module, batch: Any, info: StepInfo) -> None:
        """One forward pass on a training batch that changes no state, for the trainer's start-up probes
        of the norms' input scale and for ``norm.alpha_init=calibrate``. Default: :meth:`training_step`,
        its loss discarded; a task whose ``training_step`` updates its own state overrides it."""
        self.training_step(model, batch, info)

    def after_calibration(self, model: nn.Module) -> None:
        """After ``norm.alpha_init=calibrate`` set the alphas, before training (e.g. a teacher that must
        start as a copy of the student). Default: nothing."""

    def before_optimizer_step(self, model: nn.Module, info: StepInfo) -> None:
        """After the step's gradients are accumulated, unscaled and clipped; before the optimizer step."""

    def after_optimizer_step(self, model: nn.Module, info: StepInfo) -> None:
        """After the optimizer step and the EMA update (``info.step`` is the step just taken)."""

    # ---- optional: state and costly metrics -----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The task's own training state (tensors and plain containers only: checkpoints are loaded with
        ``weights_only=True``). Saved in every checkpoint and restored on resume. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint has task state {sorted(state)}")

    def eval_extra(
        self, model: nn.Module, device: torch.device, run_dir: Any, source: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        """Costly final metrics that only ``eval.py`` computes (FID from samples, lm-eval scores).
        ``source`` describes the weights (checkpoint, step, raw or EMA, config hash): whatever the task
        caches under ``run_dir`` must record it and be rebuilt when it changes. Default: none."""
        return {}
