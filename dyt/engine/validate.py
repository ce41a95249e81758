"""Start-up checks of the values a run is configured with, before anything is built or written.

Each check names the key, the value it got and what is allowed, in one line: ``optim.lr='abc' is not
allowed: it must be a positive number``. Choices (norm names, schedule shapes, devices...) are checked
where they are used, with the valid ones listed there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what is allowed."""


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            return None
    return None


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# (what is allowed, test) for each kind of value
KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "positive whole number": ("a positive whole number", lambda v: _whole(v) and v > 0),
    "whole number >= 0": ("a whole number >= 0", lambda v: _whole(v) and v >= 0),
    "whole number": ("a whole number", _whole),
    "positive number": ("a positive number", lambda v: (n := _number(v)) is not None and math.isfinite(n) and n > 0),
    "number >= 0": ("a number >= 0", lambda v: (n := _number(v)) is not None and math.isfinite(n) and n >= 0),
    "number": ("a number", lambda v: (n := _number(v)) is not None and math.isfinite(n)),
    "fraction": ("a number in [0, 1)", lambda v: (n := _number(v)) is not None and 0 <= n < 1),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
}

# key -> (kind, may it be null)
CHECKS: dict[str, tuple[str, bool]] = {
    "seed": ("whole number", False),
    "trainer.global_batch": ("positive whole number", False),
    "trainer.micro_batch": ("positive whole number", True),
    "trainer.epochs": ("positive whole number", True),
    "trainer.max_steps": ("positive whole number", True),
    "trainer.clip_grad": ("positive number", True),
    "trainer.ema_decay": ("fraction", True),
    "trainer.ema_every": ("positive whole number", True),
    "trainer.nonfinite_skips": ("whole number >= 0", True),
    "trainer.num_workers": ("whole number >= 0", False),
    "trainer.log_every_steps": ("positive whole number", False),
    "trainer.probe_every_steps": ("whole number >= 0", True),
    "trainer.eval_every_epochs": ("positive whole number", True),
    "trainer.eval_every_steps": ("positive whole number", True),
    "trainer.ckpt_every_steps": ("positive whole number", True),
    "trainer.ckpt_every_minutes": ("positive number", True),
    "trainer.keep_checkpoints": ("positive whole number", False),
    "optim.lr": ("positive number", False),
    "optim.lr_batch_size": ("positive number", True),
    "optim.weight_decay": ("number >= 0", False),
    "optim.eps": ("positive number", True),  # null for SGD (configs/optim/sgd.yaml)
    "optim.momentum": ("fraction", True),
    "optim.nesterov": ("boolean", True),
    "optim.schedule.min_lr": ("number >= 0", True),
    "optim.schedule.min_lr_ratio": ("fraction", True),
    "optim.schedule.warmup_epochs": ("number >= 0", True),
    "optim.schedule.warmup_steps": ("whole number >= 0", True),
    "optim.schedule.step_size_epochs": ("positive number", True),
    "optim.schedule.step_size_steps": ("positive whole number", True),
    "optim.schedule.decay": ("positive number", True),
}


def _get(cfg: Any, key: str) -> tuple[bool, Any]:
    node = cfg
    for part in key.split("."):
        if not OmegaConf.is_config(node) and not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _norm_values(norm: Any) -> Iterator[tuple[str, Any]]:
    """``norm.alpha_init``, ``shift_init``, ``eps``, ``calibrate_to`` and their per-site overrides."""
    keys = ("alpha_init", "shift_init", "eps", "calibrate_to")
    for key in keys:
        if key in norm and norm[key] is not None:
            yield f"norm.{key}", norm[key]
    for site, opts in (norm.get("sites") or {}).items():
        for key in keys:
            if opts is not None and key in opts and opts[key] is not None:
                yield f"norm.sites.{site}.{key}", opts[key]


def _check_device_and_run_dir(device: Any, run_dir: Any) -> None:
    from dyt.engine.distributed import DEVICES, NO_CUDA

    if device is not None and device not in DEVICES:
        raise ConfigError(f"trainer.device={device!r} is not allowed: it must be one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(NO_CUDA)
    if run_dir is not None and Path(str(run_dir)).expanduser().exists() and not Path(str(run_dir)).is_dir():
        raise ConfigError(
            f"run_dir={run_dir} is a file, not a directory: a run dir holds the run's checkpoints and metrics; "
            "give a directory path (new or an existing run dir), or leave run_dir unset for runs/<experiment>/..."
        )


def validate_config(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first value that cannot work (see the module docstring)."""
    for key, (kind, nullable) in CHECKS.items():
        present, value = _get(cfg, key)
        if not present or (value is None and nullable):
            continue
        allowed, ok = KINDS[kind]
        if value is None or not ok(value):
            raise ConfigError(
                f"{key}={value!r} is not allowed: it must be {allowed}" + (" or null" if nullable else "")
            )
    trainer = cfg.get("trainer") or {}
    _check_device_and_run_dir(trainer.get("device"), cfg.get("run_dir"))
    if trainer.get("epochs") is None and trainer.get("max_steps") is None:
        raise ConfigError("trainer.epochs and trainer.max_steps are both null: set one of them")
    optim = cfg.get("optim") or {}
    if optim.get("nesterov") and not _number(optim.get("momentum")):
        raise ConfigError(
            f"optim.nesterov=true with optim.momentum={optim.get('momentum')!r} is not allowed: Nesterov momentum "
            "needs optim.momentum > 0 (e.g. 0.9), or set optim.nesterov=false"
        )
    betas = optim.get("betas")
    if betas is not None and (len(betas) != 2 or not all(KINDS["fraction"][1](b) for b in betas)):
        raise ConfigError(f"optim.betas={list(betas)!r} is not allowed: it must be two numbers in [0, 1)")
    for key, value in _norm_values(cfg.get("norm") or {}):
        if key.endswith("alpha_init") and value == "calibrate":
            continue
        if key.endswith(("alpha_init", "calibrate_to")) and not KINDS["positive number"][1](value):
            also = " or 'calibrate' (alpha from the input std on the first training batch)" * key.endswith("alpha_init")
            raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive number{also}")
        if not KINDS["number"][1](value):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be a number")
