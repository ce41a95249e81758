"""Objectives, one file per task; each implements the Task interface of ``dyt.engine.task``.

Here too: :func:`build_task` (the task a config names), :func:`load_run` (a trained run's task and
model, raw or EMA weights loaded) and :data:`EVAL_ONLY_KEYS`, the task settings that change how a run is
evaluated but not what it trains (declared to the engine's run identity, which names no task's keys)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf
from torch import nn

from dyt.engine.identity import declare_non_training_keys
from dyt.engine.task import Task

# Evaluation-only task keys (fnmatch patterns): changing them resumes a run as before.
EVAL_ONLY_KEYS: tuple[str, ...] = (
    "task.eval_*",  # every task: evaluation batch size, limits
    "task.fid",  # diffusion: FID reference and sample count (dyt/tasks/diffusion.py)
    "task.fid.*",
    "task.lm_eval",  # language modelling: lm-eval tasks (dyt/tasks/lm.py)
    "task.lm_eval.*",
    "task.sample_steps",  # diffusion sampling
    "task.cfg_scale",
    "task.guidance_channels",
)
declare_non_training_keys(EVAL_ONLY_KEYS)

WEIGHTS = ("raw", "ema")


def build_task(cfg: DictConfig) -> Task:
    """The task named by ``cfg.task._target_``, built from the whole config."""
    from hydra.utils import get_class

    cls = get_class(cfg.task._target_)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"task._target_={cfg.task._target_!r} is not a dyt.engine.task.Task subclass")
    return cls(cfg)


class LoadedRun(NamedTuple):
    """What :func:`load_run` returns: the model (eval mode, on CPU), its task (None for a checkpoint whose
    config names no task) and the checkpoint read (``load_checkpoint``'s dict: ``path``, ``step``,
    ``config``, ``model``, ``ema``, ...)."""

    model: nn.Module
    task: Task | None
    checkpoint: dict[str, Any]


def load_run(path: Any, weights: str = "raw", overrides: Sequence[str] | Mapping[str, Any] = ()) -> LoadedRun:
    """A run dir (its newest checkpoint) or a checkpoint, rebuilt with the config it was trained with:
    checkpoint -> task -> model -> its ``raw`` or ``ema`` weights (as ``eval.py run=...`` does). A
    checkpoint whose config names no task (only ``model`` and ``norm``) gets its model from
    ``models.create_model``.

    ``overrides``: dotlist strings (``task.eval_batch_size=8``), merged into the run's config, or a
    mapping of dotted keys to values that replace the run's."""
    from dyt.engine.checkpoint import load_checkpoint, load_model_state

    if weights not in WEIGHTS:
        raise ValueError(f"load_run: weights={weights!r}; valid values are: {', '.join(WEIGHTS)}")
    ckpt = load_checkpoint(path)
    cfg = OmegaConf.create(ckpt["config"])
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, merge=False)
    elif overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    if "task" in cfg:
        task = build_task(cfg)
        model = task.build_model()
    else:
        import models

        task, model = None, models.create_model(cfg.model, norm=cfg.norm)
    if weights == "ema" and ckpt.get("ema") is None:
        raise ValueError(f"{ckpt['path']} has no EMA weights (the run had trainer.ema_decay=null); load weights='raw'")
    # The EMA holds floating-point tensors only; integer buffers come from the raw model.
    state = {**ckpt["model"], **ckpt["ema"]} if weights == "ema" else ckpt["model"]
    load_model_state(model, state, source=str(ckpt["path"]))
    return LoadedRun(model.eval(), task, ckpt)
