"""Atomic, checksummed checkpoints, automatic resume with fallback, and loading that runs no code.

Layout of ``<run_dir>/checkpoints/``::

    step_00001200.pt                 one file per checkpoint (DDP / single process) and, beside it,
    step_00001200.pt.manifest.json   its manifest; or
    step_00001200/                   a DCP directory (FSDP2): sharded model / EMA / optimizer, meta.pt
                                     and manifest.json
    last                             text file naming the newest complete checkpoint

What a checkpoint guarantees:

- **Atomic.** A checkpoint is written under a temporary name, fsynced and renamed, and only then does
  ``last`` (itself replaced atomically) point to it: a process killed at any moment leaves the previous
  checkpoint intact. A failed write (disk full) removes its temporary files and says so in one line.
- **Checksummed.** The manifest (JSON) records the size and sha256 of every file of the checkpoint and
  ``finite: true``. It is written before the checkpoint is renamed into place, so a checkpoint without
  one was not written completely by this code. Every load verifies it first.
- **Finite.** :func:`check_finite_state` runs before every save: a checkpoint whose model, EMA or
  optimizer holds NaN or inf is never written, and pruning never deletes the newest finite checkpoint.
- **Fallback.** :func:`latest_checkpoint` skips a damaged newest checkpoint (truncated, flipped bytes,
  missing manifest, unreadable DCP metadata; an empty or garbage ``last``) with a one-line warning and
  returns the newest intact one. A file that asks to run code is not damage: it stops the run
  (:class:`UntrustedContentError`), the same for single files and DCP metadata.
- **No code execution.** Single files load with ``torch.load(weights_only=True)``; DCP metadata, which
  DCP itself reads with plain ``pickle``, is read by an unpickler that admits only DCP's metadata
  classes, and DCP's non-tensor entries load with ``weights_only=True``.

One save path and one load path, whatever the layout. A checkpoint is one dict: the state dicts of the
stateful parts (:data:`PARTS`: model, EMA, optimizer) beside plain values. :func:`save_checkpoint` writes
it; :func:`read_checkpoint` reads the plain values back and :func:`read_parts` the parts. The layout decides
only how the parts' tensors travel: a single file holds the whole dict (``torch.save`` by rank 0); a DCP
directory holds the parts sharded (every rank writes its shards; DCP reshards them on load, to any number
of processes) and the plain values in ``meta.pt``. Both layouts share the finiteness check, the temporary
name, the manifest, the publication and the pruning.

What a checkpoint holds is written in one place, :class:`dyt.engine.state.TrainState`: its parts
(``TrainState.parts``) and, beside them (``TrainState._meta``), the format version, the counters, the grad
scaler, the RNG states, the task's own state, the resolved config, the world size and the global batch.
This module writes and reads checkpoints. Beside it, one concept each: :mod:`dyt.engine.manifest` (the
checksums), :mod:`dyt.engine.checkpoint_dir` (names, ``last``, the newest intact checkpoint) and
:mod:`dyt.engine.rng` (the RNG states as plain types); their public names are re-exported here, so
``dyt.engine.checkpoint`` stays the one import for the checkpoint API.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from dyt.engine.checkpoint_dir import (  # noqa: F401  (re-exported: the checkpoint API in one place)
    LAST,
    META,
    checkpoint_name,
    latest_checkpoint,
    latest_finite_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
    warn,
)
from dyt.engine.manifest import (  # noqa: F401  (re-exported)
    MANIFEST,
    directory_files,
    manifest_path,
    read_manifest,
    verify_checkpoint,
    write_manifest,
)
from dyt.engine.rng import rng_state, set_rng_state  # noqa: F401  (re-exported)
from dyt.engine.safe_read import (  # noqa: F401  (re-exported: the checkpoint API in one place)
    CheckpointError,
    SafeFileSystemReader,
    SafeLoadPlanner,
    UntrustedContentError,
    dcp_load,
    first_failure,
    safe_load,
)
from dyt.io import atomic_write_text

# The stateful parts whose state dicts a checkpoint holds beside its plain values: what DCP shards and
# what must be finite for a checkpoint to be written (their objects: dyt.engine.state.TrainState.parts).
PARTS = ("model", "ema", "optimizer")


class NonFiniteCheckpointError(CheckpointError):
    """The state to be saved holds NaN or inf in its model, EMA or optimizer tensors."""


# ---- finiteness -------------------------------------------------------------------------------------
def check_finite_state(state: dict[str, Any], keys: tuple[str, ...] = PARTS) -> list[str]:
    """Names (``model.blocks.0.fc.weight``, ``optimizer.state.3.exp_avg``) of the floating-point tensors
    under ``state[key]`` for ``key`` in ``keys`` that hold NaN or inf; empty when all are finite.

    DTensors are checked through their local shard, so under FSDP2 each rank checks its own part
    (:func:`save_checkpoint` combines the ranks' answers).
    """
    names: list[str] = []
    flags: list[torch.Tensor] = []

    def walk(obj: Any, name: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.to_local() if hasattr(obj, "to_local") else obj
            if t.is_floating_point() or t.is_complex():
                names.append(name)
                flags.append(~torch.isfinite(t).all())
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}.{i}")

    for key in keys:
        walk(state.get(key), key)
    if not flags:
        return []
    bad = torch.stack([f.cpu() for f in flags]).tolist()  # one device sync, not one per tensor
    return [n for n, b in zip(names, bad, strict=True) if b]


def _refuse_non_finite(bad: list[str], ckpt_dir: Path, step: int, n_bad: int) -> NonFiniteCheckpointError:
    shown = ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else "") if bad else "tensors on other ranks"
    last = latest_finite_checkpoint(ckpt_dir)
    return NonFiniteCheckpointError(
        f"refusing to write checkpoint step {step}: {n_bad} tensor(s) hold NaN or inf ({shown}). "
        f"The last finite checkpoint is {last or 'none (no checkpoint yet)'}; resume from it with a lower "
        "optim.lr or a trainer.clip_grad, or check the data"
    )


# ---- writing ----------------------------------------------------------------------------------------
def _save_synced(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` (bytes: as they are) and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        f.write(obj) if isinstance(obj, bytes) else torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _prune(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, never the newest finite one, and manifests
    whose checkpoint is gone. Tolerates files that vanish meanwhile."""
    found = list_checkpoints(ckpt_dir)
    protected = latest_finite_checkpoint(ckpt_dir)
    for old in found[: -max(1, keep)]:
        if old != protected:
            _remove(old)
            manifest_path(old).unlink(missing_ok=True)
    for orphan in ckpt_dir.glob("step_*.pt." + MANIFEST):
        if not orphan.with_name(orphan.name.removesuffix("." + MANIFEST)).exists():
            orphan.unlink(missing_ok=True)


def _publish(ckpt_dir: Path, tmp: Path, final: Path, keep: int) -> None:
    """Rename a finished temporary checkpoint into place, point ``last`` at it, prune old ones."""
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_dir / LAST, final.name + "\n")  # also fsyncs the directory, both renames
    _prune(ckpt_dir, keep)


def remove_partial(ckpt_dir: str | os.PathLike) -> None:
    """Delete temporary files left by a process killed while writing a checkpoint (rank 0)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".*.tmp*"):
            _remove(p)


def human_bytes(n: float) -> str:
    """``2.2 MB``, ``512 B``, ``1.5 TB``: decimal units with two significant figures at least."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _write_failed(final: Path, e: BaseException) -> CheckpointError:
    """One actionable line for a checkpoint that could not be written (disk full, quota, I/O error)."""
    if isinstance(e, CheckpointException):
        e = first_failure(e)
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
    # torch.save's zip writer says "[enforce fail at inline_container.cc:NNN] . unexpected pos ...": drop
    # the C++ location, keep what happened.
    reason = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", reason) or "the write failed"
    try:
        free = f"{human_bytes(shutil.disk_usage(final.parent).free)} free there"
    except OSError:
        free = "free space unknown"
    last = latest_finite_checkpoint(final.parent)
    return CheckpointError(
        f"could not write checkpoint {final} ({type(e).__name__}: {reason}; {free}); its temporary files "
        "were removed. Free disk space (or lower trainer.keep_checkpoints, or move run_dir to a larger disk) "
        f"and rerun the same command: it resumes from {last or 'the start'}"
    )


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write(data: dict[str, Any], tmp: Path, sharded: bool, background: bool) -> Any:
    """Write a checkpoint's data to ``tmp``: one file holding the whole dict, or (``sharded``) this rank's
    shards of the parts through DCP, in a background thread with ``background`` (then the future to wait
    for is returned). torch.save reports a full disk as a RuntimeError, DCP as a CheckpointException."""
    if not sharded:
        _save_synced(data, tmp)
        return None
    with warnings.catch_warnings():  # DCP warns when it runs without a process group, which is fine
        warnings.filterwarnings("ignore", message=".*(no_dist|process group|single process).*")
        if background:
            response = dcp.async_save(data, checkpoint_id=tmp, process_group=_async_group())
            return getattr(response, "upload_completion", response)
        dcp.save(data, checkpoint_id=tmp)
    return None


def _count_over_ranks(n: int) -> int:
    """``n`` summed over the ranks of the process group (``n`` itself without one)."""
    total = torch.tensor(float(n))
    if dist.is_available() and dist.is_initialized():
        total = total.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(total)
    return int(total.item())


def save_checkpoint(
    state: dict[str, Any],
    ckpt_dir: str | os.PathLike,
    step: int,
    keep: int = 1,
    *,
    sharded: bool = False,
    is_main: bool = True,
    background: bool = False,
) -> Path | PendingCheckpoint:
    """Write ``state`` as checkpoint ``step`` with its manifest, atomically (call on every rank).

    ``state`` is one checkpoint dict: the state dicts of the :data:`PARTS` beside plain values. The layout
    decides only how the parts are written: one file ``step_<step>.pt`` holding the whole dict, written by
    rank 0 (``is_main``) alone; or, ``sharded`` (FSDP2), a DCP directory ``step_<step>/`` into which every
    rank writes its shards of the parts (DTensor state dicts), the plain values going to ``meta.pt``. With
    ``background`` (DCP only) DCP copies the tensors and writes them in a background thread: the returned
    :class:`PendingCheckpoint` publishes the checkpoint when :meth:`~PendingCheckpoint.finish` is called.

    Raises :class:`NonFiniteCheckpointError` (nothing written; under DCP on every rank, if any rank's
    shards hold NaN or inf) and a one-line :class:`CheckpointError` if the write fails."""
    if background and not sharded:
        raise ValueError("background checkpoint writes need sharded=True (DCP); one file is written in place")
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / checkpoint_name(step, sharded)
    if not (sharded or is_main):
        return final  # one file: rank 0 writes it
    parts = {k: state[k] for k in PARTS if state.get(k) is not None}
    bad = check_finite_state(parts)
    n_bad = _count_over_ranks(len(bad)) if sharded else len(bad)
    if n_bad > 0:
        raise _refuse_non_finite(bad, ckpt_dir, step, n_bad)
    tmp = ckpt_dir / (f".{final.name}.tmp" + ("" if sharded else str(os.getpid())))
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
    meta = None
    if sharded:
        _barrier()  # the directory exists, no stale temporary one
        meta = _to_bytes({k: v for k, v in state.items() if k not in PARTS})  # now: it may change meanwhile
    try:
        future = _write(parts if sharded else state, tmp, sharded, background)
    except (OSError, RuntimeError, CheckpointException) as e:  # CheckpointException is a BaseException
        if is_main:
            _remove(tmp)
        raise _write_failed(final, e) from None
    pending = PendingCheckpoint(future, tmp, final, meta, step, keep, is_main)
    if background:
        return pending
    pending.finish()
    if sharded:
        _barrier()
    return final


class PendingCheckpoint:
    """A checkpoint whose tensors are written (or, with ``trainer.async_checkpoint``, being written: DCP's
    ``async_save`` writes them in a background thread while training goes on). :meth:`finish` waits for
    the write; only then does rank 0 write ``meta.pt`` (DCP) and the manifest and publish the checkpoint,
    so ``last`` keeps naming the previous one until this one is complete and checksummed."""

    def __init__(
        self, future: Any, tmp: Path, final: Path, meta: bytes | None, step: int, keep: int, is_main: bool
    ) -> None:
        self.future, self.tmp, self.final, self.meta = future, tmp, final, meta
        self.step, self.keep, self.is_main = step, keep, is_main

    def done(self) -> bool:
        """Whether the background write has ended (finished or failed); never blocks."""
        return self.future is None or self.future.done()

    def finish(self) -> Path:
        """Wait for the tensors, then (rank 0) write meta.pt and the manifest and publish."""
        try:
            if self.future is not None:
                self.future.result()
            if self.is_main and self.meta is None:  # one file: its manifest lies beside it
                write_manifest({self.final.name: self.tmp}, self.step, manifest_path(self.final))
            elif self.is_main:
                _save_synced(self.meta, self.tmp / META)
                write_manifest(directory_files(self.tmp), self.step, self.tmp / MANIFEST)
        except (OSError, RuntimeError, CheckpointException) as e:  # CheckpointException is a BaseException
            if self.is_main:
                _remove(self.tmp)
            raise _write_failed(self.final, e) from None
        if self.is_main:
            _publish(self.final.parent, self.tmp, self.final, self.keep)
        return self.final


_ASYNC_GROUP: list[Any] = []  # one gloo group for the background writes' collectives, made on first use


def _async_group() -> Any:
    """A process group of its own for DCP's background collectives: they must not interleave with
    training's on the default group, and async_save needs a CPU backend also when training uses NCCL."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if not _ASYNC_GROUP:
        _ASYNC_GROUP.append(dist.new_group(backend="gloo"))
    return _ASYNC_GROUP[0]


# ---- reading ----------------------------------------------------------------------------------------
def _dcp_full_state(path: Path, prefixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """Unsharded tensors of a DCP checkpoint under ``prefixes`` (no process group needed)."""
    metadata = SafeFileSystemReader(path).read_metadata()
    flat = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in metadata.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata) and k.split(".", 1)[0] in prefixes
    }
    dcp_load(flat, path, "in one process")
    out: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    for k, v in flat.items():
        prefix, name = k.split(".", 1)
        out[prefix][name] = v
    return out


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict of ``path`` (verified beforehand), read without running code: all of a file;
    of a DCP directory only the plain values (``meta.pt``), its parts being read by :func:`read_parts`."""
    state = safe_load(path / META if path.is_dir() else path)
    if not isinstance(state, dict) or not (path.is_dir() or "model" in state):
        raise CheckpointError(f"{path} is not a dyt checkpoint: expected a dict with a 'model' entry")
    return state


def read_parts(
    path: Path, state: dict[str, Any], names: tuple[str, ...] = PARTS, into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``state`` (from :func:`read_checkpoint`) with the state dicts of the parts of checkpoint ``path``.

    The layout decides only how they are read: a file's dict holds them already; a DCP checkpoint's are
    filled into ``into`` (this run's state dicts from ``get_state_dict``, None for an absent part: DCP
    reshards them to this run's ranks; call on every rank) or, without it, read whole in one process (the
    :data:`PARTS` in ``names``; one the checkpoint lacks, such as an absent EMA, reads as None)."""
    if not path.is_dir():
        return state
    if into is not None:
        shards = {k: v for k, v in into.items() if v is not None}
        load_sharded_into(path, shards)
        state.update(shards)
    else:
        state.update({k: v or None for k, v in _dcp_full_state(path, names).items()})
    return state


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint for inspection or evaluation, on CPU, in one process.

    ``path``: a checkpoint file, a DCP checkpoint directory, a ``checkpoints/`` directory or a run dir
    (its newest intact checkpoint). The checkpoint is verified against its manifest first
    (``verify=False`` checks sizes only, for a path :func:`latest_checkpoint` has just verified).
    Returns the checkpoint dict (see the module docstring), with ``model`` and ``ema`` as full,
    unsharded state dicts also for FSDP2 checkpoints (whose optimizer state is not read), and ``path``.
    """
    path = resolve_checkpoint(path, verify)
    state = read_parts(path, read_checkpoint(path), ("model", "ema"))
    state["path"] = str(path)
    return state


def adopt_checkpoint(path: str | os.PathLike) -> Path:
    """Write the manifest of a checkpoint that has none (written before checksums existed), after
    loading it safely and checking that its model, EMA and optimizer are finite. Returns its path."""
    path = Path(path)
    if manifest_path(path).exists():
        raise CheckpointError(f"{path} already has a manifest; nothing to adopt")
    state = read_parts(path, read_checkpoint(path))
    bad = check_finite_state(state)
    if bad:
        raise NonFiniteCheckpointError(f"not adopting {path}: NaN or inf in {', '.join(bad[:4])}")
    files = directory_files(path) if path.is_dir() else {path.name: path}
    write_manifest(files, int(state.get("step", -1)), manifest_path(path))
    return path


def load_sharded_into(path: Path, sharded: dict[str, Any]) -> None:
    """Fill ``sharded`` (DTensor state dicts from ``get_state_dict``) in place from a DCP checkpoint
    (call on every rank, after :func:`latest_checkpoint` verified ``path``)."""
    dcp_load(sharded, path, "into this model")


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
