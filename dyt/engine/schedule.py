"""Optimizer, and per-step schedules of the learning rate, any optimizer hyperparameter and task scalars.

Every schedule is a pure function of the optimizer step, evaluated before each step: resuming at step
``s`` gives exactly the values of an uninterrupted run, and no schedule has state to checkpoint.

One :class:`Schedule` serves all three uses:

- the learning rate (``optim.schedule``): peak lr from the linear scaling rule, warmup, then cosine /
  constant / linear / polynomial / step decay;
- optimizer hyperparameters (``optim.schedules.<key>``, e.g. DINO's weight decay 0.04 -> 0.4), set on every
  parameter group as ``value * group["<key>_scale"]``; a group built with ``<key>`` 0 gets scale 0, so a
  weight-decay schedule never decays the parameters the task exempted;
- task scalars (``Task.schedules()``: DINO's teacher momentum and temperature, wav2vec 2.0's quantizer
  temperature), handed to the task as ``StepInfo.scalars``.

Warmup rises linearly (or quadratically, fms-fsdp's LLaMA warmup) from ``warmup_start`` at step 0 to
``start`` at step ``warmup``, as in ConvNeXt's / DINO's ``cosine_scheduler`` and fairseq's schedulers: the
first step runs at ``warmup_start`` (0 for the lr). After the warmup the value moves from ``start`` to
``end`` over ``length`` steps (default: the rest of the run) and stays at ``end``. With
``warmup_combine="min"`` the decay instead runs from step 0 and the value is the smaller of the two curves
(fms-fsdp ``main_training_llama.py``, the paper's LLaMA runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SHAPES = ("constant", "linear", "cosine", "polynomial", "exponential", "step")
WARMUP_SHAPES = ("linear", "quadratic")
WARMUP_COMBINES = ("sequential", "min")
UNITS = ("step", "epoch")


@dataclass(frozen=True)
class Schedule:
    """A value per optimizer step (see the module docstring).

    Args:
        shape: ``constant`` (stays at ``start``), ``linear``, ``cosine`` (half cosine from ``start`` to ``end``),
            ``polynomial`` (``end + (start - end) * (1 - p) ** power``, fairseq's ``polynomial_decay``) or
            ``exponential`` (``start * decay ** t``, clipped at ``end``; fairseq's Gumbel temperature) or
            ``step`` (``start * decay ** (t // step_size)``, clipped at ``end``: torchvision's ``StepLR``, the
            lr times 0.1 every 30 epochs of its classification reference recipe).
        start, end: value after the warmup and at the end of the decay.
        total: length of the run in clock ticks (steps, or epochs with ``tick`` > 1).
        warmup, warmup_start, warmup_shape: warmup length, value at step 0 and ``linear`` | ``quadratic``.
        length: ticks from ``start`` to ``end`` (default: ``total - warmup``, or ``total`` with ``min``).
        warmup_combine: ``sequential`` (decay after the warmup) or ``min`` (fms-fsdp: min of both curves).
        tick: optimizer steps per clock tick: 1, or the steps of an epoch for per-epoch schedules (DINO's
            teacher temperature changes once per epoch).
        step_size: ticks between two multiplications by ``decay`` (``step`` only).
    """

    shape: str
    start: float
    end: float
    total: int
    warmup: int = 0
    warmup_start: float = 0.0
    warmup_shape: str = "linear"
    length: int | None = None
    warmup_combine: str = "sequential"
    power: float = 1.0
    decay: float = 1.0
    tick: int = 1
    step_size: int | None = None

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("shape", self.shape, SHAPES),
            ("warmup_shape", self.warmup_shape, WARMUP_SHAPES),
            ("warmup_combine", self.warmup_combine, WARMUP_COMBINES),
        ):
            if value not in valid:
                raise ValueError(f"unknown schedule {name} {value!r}; valid choices are: {', '.join(valid)}")
        if self.warmup < 0 or self.total < 0 or self.tick < 1:
            raise ValueError(f"schedule lengths must be >= 0 (warmup={self.warmup}, total={self.total})")
        if self.shape == "step" and (self.step_size is None or self.step_size < 1):
            raise ValueError(
                f"schedule shape 'step' needs a step size of at least one tick, got {self.step_size}: set "
                "step_size_steps or step_size_epochs (torchvision's recipe: step_size_epochs: 30)"
            )

    def _warm(self, t: int) -> float:
        frac = min(t, self.warmup) / self.warmup
        if self.warmup_shape == "quadratic":
            frac = 1.0 - (1.0 - frac) ** 2
        return self.warmup_start + (self.start - self.warmup_start) * frac

    def _decay(self, t: int) -> float:
        if self.shape == "constant":
            return self.start
        if self.shape in ("exponential", "step"):
            value = self.start * self.decay ** (t // (self.step_size if self.shape == "step" else 1))
            return max(value, self.end) if self.decay <= 1.0 else min(value, self.end)
        default = self.total if self.warmup_combine == "min" else self.total - self.warmup
        length = max(1, self.length if self.length is not None else default)
        p = min(1.0, t / length)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * p
        if self.shape == "polynomial":
            return self.end + (self.start - self.end) * (1.0 - p) ** self.power
        return self.end + 0.5 * (self.start - self.end) * (1.0 + math.cos(math.pi * p))

    def __call__(self, step: int) -> float:
        """The value at optimizer step ``step`` (0-based)."""
        t = step // self.tick
        if self.warmup_combine == "min":
            return min(self._warm(t), self._decay(t)) if self.warmup else self._decay(t)
        if t < self.warmup:
            return self._warm(t)
        return self._decay(t - self.warmup)


def _ticks(spec: Mapping[str, Any], key: str, steps_per_epoch: int, tick: int) -> int | None:
    """``<key>_steps`` or ``<key>_epochs`` of ``spec`` in clock ticks (None when neither is set)."""
    steps, epochs = spec.get(f"{key}_steps"), spec.get(f"{key}_epochs")
    if steps is not None:
        return round(int(steps) / tick)
    if epochs is not None:
        return round(float(epochs) * steps_per_epoch / tick)
    return None


def build_scalar_schedule(spec: Mapping[str, Any], total_steps: int, steps_per_epoch: int) -> Schedule:
    """A :class:`Schedule` from a config mapping.

    Keys: ``shape``, ``start``, ``end`` (default ``start``), ``warmup_steps`` | ``warmup_epochs``,
    ``warmup_start``, ``warmup_shape``, ``steps`` | ``epochs`` (length of the decay), ``warmup_combine``,
    ``power``, ``decay``, ``step_size_steps`` | ``step_size_epochs`` (``step`` shape), ``unit`` (``step``, or
    ``epoch`` for a value that changes once per epoch). Lengths in epochs become ticks with the epoch
    length, so a step decay every 30 epochs falls on the same optimizer steps in either unit.
    """
    known = {
        "shape",
        "start",
        "end",
        "warmup_steps",
        "warmup_epochs",
        "warmup_start",
        "warmup_shape",
        "steps",
        "epochs",
        "warmup_combine",
        "power",
        "decay",
        "step_size_steps",
        "step_size_epochs",
        "unit",
    }
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"unknown schedule keys {unknown}; valid keys are: {', '.join(sorted(known))}")
    unit = spec.get("unit", "step")
    if unit not in UNITS:
        raise ValueError(f"unknown schedule unit {unit!r}; valid choices are: {', '.join(UNITS)}")
    tick = steps_per_epoch if unit == "epoch" else 1
    start = float(spec["start"])
    return Schedule(
        shape=spec.get("shape", "cosine"),
        start=start,
        end=float(spec.get("end", start)),
        total=math.ceil(total_steps / tick),
        warmup=_ticks(spec, "warmup", steps_per_epoch, tick) or 0,
        warmup_start=float(spec.get("warmup_start", 0.0)),
        warmup_shape=spec.get("warmup_shape", "linear"),
        length=_ticks(
            {"length_steps": spec.get("steps"), "length_epochs": spec.get("epochs")}, "length", steps_per_epoch, tick
        ),
        warmup_combine=spec.get("warmup_combine", "sequential"),
        power=float(spec.get("power", 1.0)),
        decay=float(spec.get("decay", 1.0)),
        tick=tick,
        step_size=_ticks(spec, "step_size", steps_per_epoch, tick),
    )


def scaled_lr(optim_cfg: Any, global_batch: int) -> float:
    """Peak lr after the linear scaling rule: ``lr * global_batch / lr_batch_size`` (paper App. A quotes
    lr 4e-3 at batch 4096; MAE and DINO quote a base lr per 256); ``lr`` unchanged when ``lr_batch_size``
    is null."""
    lr = float(optim_cfg.lr)
    base = optim_cfg.get("lr_batch_size")
    return lr if base is None else lr * global_batch / float(base)


def build_lr_schedule(optim_cfg: Any, peak_lr: float, total_steps: int, steps_per_epoch: int) -> Schedule:
    """The lr schedule of ``optim.schedule``: ``name`` is the decay shape (``cosine``, ``constant``,
    ``linear``, ``polynomial``, ``step``), from ``peak_lr`` to ``min_lr`` (or ``min_lr_ratio * peak_lr``),
    after ``warmup_steps`` | ``warmup_epochs`` of warmup from 0; ``step`` multiplies the lr by ``decay``
    every ``step_size_steps`` | ``step_size_epochs``, counted from the end of the warmup."""
    s = optim_cfg.schedule
    ratio = s.get("min_lr_ratio")
    spec = {
        "shape": s.get("name", "cosine"),
        "start": peak_lr,
        "end": peak_lr * float(ratio) if ratio is not None else float(s.get("min_lr", 0.0)),
        "warmup_shape": s.get("warmup_shape", "linear"),
        "warmup_combine": s.get("warmup_combine", "sequential"),
        "power": s.get("power", 1.0),
        "decay": s.get("decay", 0.1),  # torch.optim.lr_scheduler.StepLR's default gamma
    }
    if s.get("warmup_steps") is not None:
        spec["warmup_steps"] = s.warmup_steps
    else:
        spec["warmup_epochs"] = s.get("warmup_epochs", 0)
    for key in ("step_size_steps", "step_size_epochs"):
        if s.get(key) is not None:
            spec[key] = s[key]
    return build_scalar_schedule(spec, total_steps, steps_per_epoch)


def build_hyper_schedules(optim_cfg: Any, total_steps: int, steps_per_epoch: int) -> dict[str, Schedule]:
    """``optim.schedules``: per-step schedules of optimizer hyperparameters other than the lr."""
    specs = optim_cfg.get("schedules") or {}
    if "lr" in specs:
        raise ValueError("optim.schedules.lr is not allowed: the learning rate is scheduled by optim.schedule")
    return {key: build_scalar_schedule(spec, total_steps, steps_per_epoch) for key, spec in specs.items()}


# The keys each optimizer takes besides lr and weight_decay. An optimizer's own keys must be set; the keys
# of the others must be null (configs/optim/sgd.yaml nulls Adam's), as they would silently do nothing.
OPTIMIZER_KEYS = {"adamw": ("betas", "eps"), "adam": ("betas", "eps"), "sgd": ("momentum", "nesterov")}
OPTIMIZERS = tuple(OPTIMIZER_KEYS)


def build_optimizer(optim_cfg: Any, task: Any, model: nn.Module, peak_lr: float) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` over ``task.param_groups(model, optim.weight_decay)``: AdamW (or Adam,
    with fairseq's decoupled weight decay, i.e. AdamW) with ``betas`` and ``eps``, or SGD with ``momentum``
    and ``nesterov`` (PyTorch's SGD: weight decay added to the gradient, as torchvision's classification
    reference trains ResNet-50 and VGG19, paper Table 16).

    Every group gets ``<key>_scale`` for each scheduled hyperparameter ``key`` (1, or 0 when the group was
    built with ``key`` 0) unless the task set one."""
    name = optim_cfg.name
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid choices are: {', '.join(OPTIMIZERS)}")
    for key in sorted({k for keys in OPTIMIZER_KEYS.values() for k in keys}):
        value, own = optim_cfg.get(key), key in OPTIMIZER_KEYS[name]
        if own and value is None:
            raise ValueError(f"optim.{key} is null but optimizer {name!r} needs it: set optim.{key}")
        if not own and value is not None:
            raise ValueError(
                f"optim.{key}={value!r} does nothing for optimizer {name!r}: choose the optimizer with its config "
                f"group (optim={name} instead of optim.name={name}), or set optim.{key}=null"
            )
    groups = [g for g in task.param_groups(model, float(optim_cfg.weight_decay)) if len(g["params"]) > 0]
    for key in optim_cfg.get("schedules") or {}:
        for g in groups:
            g.setdefault(f"{key}_scale", 0.0 if g.get(key, 1.0) == 0 else 1.0)
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=peak_lr,
            momentum=float(optim_cfg.momentum),
            nesterov=bool(optim_cfg.nesterov),
        )
    betas = tuple(float(b) for b in optim_cfg.betas)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=betas, eps=float(optim_cfg.eps))


def set_hyper(optimizer: torch.optim.Optimizer, key: str, value: float) -> None:
    """Set ``key`` on every parameter group to ``value * group["<key>_scale"]`` (default scale 1;
    ``lr_scale`` carries layer-wise lr decay)."""
    for g in optimizer.param_groups:
        g[key] = value * g.get(f"{key}_scale", 1.0)
