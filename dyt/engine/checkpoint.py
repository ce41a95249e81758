"""Atomic checkpoints, automatic resume and safe loading.

Layout of ``<run_dir>/checkpoints/``::

    step_00001200.pt        one file per checkpoint (DDP / single process), or
    step_00001200/          a DCP directory (FSDP2): sharded model / EMA / optimizer + meta.pt
    last                    text file naming the newest complete checkpoint

A checkpoint is written under a temporary name, fsynced and renamed, and only then does ``last``
(itself replaced atomically) point to it: a process killed at any moment leaves the previous
checkpoint intact. Loading uses ``torch.load(weights_only=True)`` or DCP only, so a checkpoint cannot
execute code; an unreadable checkpoint raises :class:`CheckpointError` naming the file rather than
silently starting afresh.

A checkpoint dict holds ``model``, ``ema`` (or None), ``optimizer``, ``scheduler``, ``scaler``,
``step``, ``epoch``, ``batch_in_epoch`` (data position), ``rng`` (torch / cuda / numpy / python),
``wandb_id``, ``metrics_bytes`` (length of metrics.jsonl when saved), ``eval_metrics``, ``eval_step``
and ``config`` (the resolved config as a plain dict).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from dyt.io import atomic_write_text

LAST = "last"
META = "meta.pt"  # the non-sharded part of a DCP checkpoint
SHARDED_KEYS = ("model", "ema", "optimizer")  # what a DCP checkpoint stores sharded
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not matching the model."""


# ---- RNG state as plain types (weights_only-loadable) ----------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch / cuda / numpy / python RNG states as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---- finding checkpoints ----------------------------------------------------------------------------
def checkpoint_name(step: int, sharded: bool) -> str:
    return f"step_{step:08d}" + ("" if sharded else ".pt")


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary names never match)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``last`` names, else the newest complete one, else None (a fresh run)."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / LAST
    if last.is_file():
        target = ckpt_dir / last.read_text().strip()
        if not target.exists():
            raise CheckpointError(
                f"{last} names {target.name}, which does not exist; delete {last} to "
                "resume from the newest checkpoint in that directory"
            )
        return target
    found = _checkpoints(ckpt_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file or DCP directory, its ``checkpoints/`` directory, or a run dir -> the checkpoint."""
    path = Path(path)
    if path.is_file() or (path / META).is_file():
        return path
    for ckpt_dir in (path, path / "checkpoints"):
        found = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
        if found is not None:
            return found
    raise CheckpointError(
        f"no checkpoint at {path}: expected a step_*.pt file, a DCP checkpoint directory, "
        "a checkpoints/ directory or a run dir containing one"
    )


# ---- writing ----------------------------------------------------------------------------------------
def _save_synced(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _publish(ckpt_dir: Path, tmp: Path, final: Path, keep: int) -> None:
    """Rename a finished temporary checkpoint into place, point ``last`` at it, prune old ones."""
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_dir / LAST, final.name + "\n")  # also fsyncs the directory, both renames
    for old in _checkpoints(ckpt_dir)[: -max(1, keep)]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def remove_partial(ckpt_dir: str | os.PathLike) -> None:
    """Delete temporary files left by a process killed while writing a checkpoint (rank 0)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".*.tmp*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | os.PathLike, step: int, keep: int = 1) -> Path:
    """Write ``state`` as ``step_<step>.pt`` atomically (call on rank 0 only); returns its path."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / checkpoint_name(step, sharded=False)
    tmp = ckpt_dir / f".{final.name}.tmp{os.getpid()}"
    _save_synced(state, tmp)
    _publish(ckpt_dir, tmp, final, keep)
    return final


def save_sharded_checkpoint(
    sharded: dict[str, Any], meta: dict[str, Any], ckpt_dir: str | os.PathLike, step: int, keep: int, is_main: bool
) -> Path:
    """Write a DCP checkpoint (call on every rank): ``sharded`` (model / EMA / optimizer state dicts
    of DTensors) through DCP, ``meta`` (everything else) as ``meta.pt`` by rank 0."""
    import torch.distributed as dist

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / checkpoint_name(step, sharded=True)
    tmp = ckpt_dir / f".{final.name}.tmp"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    dist.barrier()
    dcp.save(sharded, checkpoint_id=tmp)
    if is_main:
        _save_synced(meta, tmp / META)
        _publish(ckpt_dir, tmp, final, keep)
    dist.barrier()
    return final


# ---- reading ----------------------------------------------------------------------------------------
def safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU; :class:`CheckpointError` naming the file if it fails."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # weights_only names the global it blocked (e.g. "GLOBAL posix.system"); garbage fails otherwise.
        blocked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line]
        if blocked:
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled objects other than tensors and "
                "plain containers, which could execute code (torch.load with "
                f"weights_only=True: {blocked[0]})"
            ) from e
        detail = next((line.strip() for line in str(e).splitlines()[::-1] if line.strip()), "")
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt; {type(e).__name__}: "
            f"{detail}). Delete it and point {path.parent / LAST} at an earlier checkpoint, "
            "or remove the run dir to start afresh"
        ) from e


def _dcp_full_state(path: Path, prefixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """Unsharded tensors of a DCP checkpoint under ``prefixes`` (no process group needed)."""
    try:
        metadata = dcp.FileSystemReader(path).read_metadata()
    except Exception as e:
        raise CheckpointError(f"DCP checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    flat = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in metadata.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata) and k.split(".", 1)[0] in prefixes
    }
    try:
        with warnings.catch_warnings():  # DCP warns that it loads in one process, which is the intent
            warnings.filterwarnings("ignore", message=".*load in a single process")
            dcp.load(flat, checkpoint_id=path, no_dist=True)
    except Exception as e:
        raise CheckpointError(f"DCP checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    out: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    for k, v in flat.items():
        prefix, name = k.split(".", 1)
        out[prefix][name] = v
    return out


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint for inspection or evaluation, on CPU, in one process.

    ``path``: a checkpoint file, a DCP checkpoint directory, a ``checkpoints/`` directory or a run dir
    (its newest checkpoint). Returns the checkpoint dict (see the module docstring), with ``model`` and
    ``ema`` as full, unsharded state dicts also for FSDP2 checkpoints, and ``path``.
    """
    path = resolve_checkpoint(path)
    if path.is_dir():
        state = safe_load(path / META)
        tensors = _dcp_full_state(path, ("model", "ema"))
        state["model"], state["ema"] = tensors["model"], tensors["ema"] or None
    else:
        state = safe_load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a dyt checkpoint: expected a dict with a 'model' entry")
    state["path"] = str(path)
    return state


def load_sharded_into(path: Path, sharded: dict[str, Any]) -> None:
    """Fill ``sharded`` (DTensor state dicts from ``get_state_dict``) in place from a DCP checkpoint."""
    try:
        dcp.load(sharded, checkpoint_id=path)
    except Exception as e:
        raise CheckpointError(
            f"cannot load DCP checkpoint {path} into this model "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` that fails with the missing, unexpected and mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or mismatched:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "") if keys else "none"

        raise CheckpointError(
            f"{source} does not match {type(model).__name__}: missing keys: {show(missing)}; "
            f"unexpected keys: {show(unexpected)}; mismatched shapes: {show(mismatched)}. "
            "Was it written by another model or config?"
        )
    model.load_state_dict(state)
