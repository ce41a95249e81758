"""What the entry points do once Hydra has composed the config (kept out of train.py / eval.py)."""

from __future__ import annotations

import json
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

from dyt.tasks.base import Task


def build_task(cfg: DictConfig) -> Task:
    """The task named by ``cfg.task._target_``, built from the whole config."""
    cls = get_class(cfg.task._target_)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"task._target_={cfg.task._target_!r} is not a dyt.tasks.base.Task subclass")
    return cls(cfg)


def train(cfg: DictConfig) -> float | None:
    """Train (or resume) the configured run; print and return its final metrics' headline number."""
    from dyt.engine import Trainer

    metrics = Trainer(cfg).fit(build_task(cfg))
    if metrics:
        print(f"final metrics ({cfg.run_dir}): {json.dumps(metrics, sort_keys=True)}", flush=True)
    return _headline(metrics)


def _headline(metrics: dict[str, Any] | None) -> float | None:
    """The number a Hydra sweeper would optimise: the first of the usual headline metrics present."""
    for key in ("val/top1", "val/loss", "fid"):
        if metrics and key in metrics:
            return float(metrics[key])
    return None
