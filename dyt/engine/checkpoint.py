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

What a checkpoint holds is written in one place, :class:`dyt.engine.state.TrainState`: the model, EMA
and optimizer state, and beside them (``TrainState._meta``) the format version, the counters, the grad
scaler, the RNG states, the task's own state, the resolved config, the world size and the global batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from dyt.engine.safe_read import (  # noqa: F401  (re-exported: the checkpoint API in one place)
    CheckpointError,
    SafeFileSystemReader,
    SafeLoadPlanner,
    UntrustedContentError,
    dcp_load,
    first_failure,
    safe_load,
)
from dyt.io import atomic_write_json, atomic_write_text

LAST = "last"
META = "meta.pt"  # the non-sharded part of a DCP checkpoint
MANIFEST = "manifest.json"  # inside a DCP directory; "<name>.manifest.json" beside a single file
SHARDED_KEYS = ("model", "ema", "optimizer")  # what a DCP checkpoint stores sharded
FINITE_KEYS = ("model", "ema", "optimizer")  # what must be finite for a checkpoint to be written
MANIFEST_FORMAT = 1
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")


class NonFiniteCheckpointError(CheckpointError):
    """The state to be saved holds NaN or inf in its model, EMA or optimizer tensors."""


def warn(message: str) -> None:
    """One line on stderr (the fallbacks of this module are worth seeing but not worth stopping for)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


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


# ---- finiteness -------------------------------------------------------------------------------------
def check_finite_state(state: dict[str, Any], keys: tuple[str, ...] = FINITE_KEYS) -> list[str]:
    """Names (``model.blocks.0.fc.weight``, ``optimizer.state.3.exp_avg``) of the floating-point tensors
    under ``state[key]`` for ``key`` in ``keys`` that hold NaN or inf; empty when all are finite.

    DTensors are checked through their local shard, so under FSDP2 each rank checks its own part
    (:func:`save_sharded_checkpoint` combines the ranks' answers).
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


# ---- manifests --------------------------------------------------------------------------------------
def manifest_path(ckpt: Path) -> Path:
    """Where the manifest of checkpoint ``ckpt`` (a ``.pt`` file or a DCP directory) lives."""
    return ckpt.with_name(ckpt.name + "." + MANIFEST) if ckpt.suffix == ".pt" else ckpt / MANIFEST


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_manifest(files: dict[str, Path], step: int, dest: Path) -> None:
    """Hash ``files`` (name in the manifest -> file on disk) and write the manifest to ``dest``."""
    entries = {name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for name, p in sorted(files.items())}
    atomic_write_json(dest, {"format": MANIFEST_FORMAT, "step": step, "finite": True, "files": entries})


def read_manifest(ckpt: Path) -> dict[str, Any]:
    """The manifest of ``ckpt``; :class:`CheckpointError` if it is missing or unreadable."""
    path = manifest_path(ckpt)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{ckpt} has no checksum manifest ({path.name}): it was not written completely by dyt (or by a dyt "
            "before checksums: if you trust it, adopt it with dyt.engine.checkpoint.adopt_checkpoint(path))"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"the manifest {path} of {ckpt} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"the manifest {path} of {ckpt} has no 'files' mapping")
    return manifest


def verify_checkpoint(ckpt: str | os.PathLike, checksums: bool = True) -> dict[str, Any]:
    """Check ``ckpt`` against its manifest and return the manifest; :class:`CheckpointError` naming the
    first missing, truncated or changed file. ``checksums=False`` checks presence and sizes only.
    A DCP directory's metadata is also read with the safe reader (it must parse and run no code)."""
    ckpt = Path(ckpt)
    manifest = read_manifest(ckpt)
    if manifest.get("finite") is not True:
        raise CheckpointError(f"{ckpt}: its manifest does not record finite: true")
    base = ckpt if ckpt.is_dir() else ckpt.parent
    for name, entry in manifest["files"].items():
        f = base / name
        if not f.is_file():
            raise CheckpointError(f"{ckpt} is incomplete: {name} is missing")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(
                f"{ckpt} is truncated or damaged: {name} has {size} bytes, written with {entry['bytes']}"
            )
        if checksums and _sha256(f) != entry["sha256"]:
            raise CheckpointError(
                f"{ckpt} is damaged: the sha256 of {name} differs from the one written with it "
                "(disk, copy or transfer corruption)"
            )
    if ckpt.is_dir():
        SafeFileSystemReader(ckpt).read_metadata()
    return manifest


# ---- finding checkpoints ----------------------------------------------------------------------------
def checkpoint_name(step: int, sharded: bool) -> str:
    return f"step_{step:08d}" + ("" if sharded else ".pt")


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints by name, oldest first (temporary names and manifests never match)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint in ``ckpt_dir`` by name, oldest first (none when the directory does not exist)."""
    return _checkpoints(Path(ckpt_dir))


def _named_by_last(ckpt_dir: Path) -> tuple[Path | None, str | None]:
    """The checkpoint ``last`` names, or None and why ``last`` cannot be used (None when absent)."""
    last = ckpt_dir / LAST
    if not last.is_file():
        return None, None
    try:
        name = last.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{last} is unreadable ({type(e).__name__})"
    if not _NAME.match(name):
        return None, f"{last} does not name a checkpoint (it holds {name[:40]!r})"
    if not (ckpt_dir / name).exists():
        return None, f"{last} names {name}, which does not exist"
    return ckpt_dir / name, None


def latest_checkpoint(ckpt_dir: str | os.PathLike, verify: bool = True) -> Path | None:
    """The newest intact checkpoint in ``ckpt_dir``, or None when there is none (a fresh run).

    The one ``last`` names comes first (a user may point ``last`` at an earlier checkpoint to roll
    back), then the others newest first. A damaged candidate (see :func:`verify_checkpoint`;
    ``verify=False`` skips the sha256 and checks sizes only) is skipped with a one-line warning.
    Raises :class:`CheckpointError` when checkpoints exist but none is intact: never a silent fresh start.
    """
    ckpt_dir = Path(ckpt_dir)
    found = _checkpoints(ckpt_dir)
    named, last_problem = _named_by_last(ckpt_dir)
    candidates = ([named] if named else []) + [p for p in reversed(found) if p != named]
    problems = [last_problem] if last_problem else []
    for ckpt in candidates:
        try:
            verify_checkpoint(ckpt, checksums=verify)
        except UntrustedContentError:
            raise  # tampering is not damage: never a fallback (docs/guarantees.md, "Untrusted content")
        except CheckpointError as e:
            problems.append(str(e))
            continue
        for problem in problems:
            warn(f"{problem}; using {ckpt} instead")
        return ckpt
    if candidates:
        raise CheckpointError(
            f"no intact checkpoint in {ckpt_dir}: {'; '.join(problems)}. Restore one from a copy, or remove "
            f"{ckpt_dir} to start the run afresh"
        )
    if last_problem:
        warn(f"{last_problem}; no checkpoint found, starting afresh")
    return None


def latest_finite_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint whose manifest records ``finite: true`` (sizes checked, no hashing): what
    to name in an error about non-finite values."""
    for ckpt in reversed(_checkpoints(Path(ckpt_dir))):
        try:
            verify_checkpoint(ckpt, checksums=False)
        except CheckpointError:
            continue
        return ckpt
    return None


def resolve_checkpoint(path: str | os.PathLike, verify: bool = True) -> Path:
    """A checkpoint file or DCP directory, its ``checkpoints/`` directory, or a run dir -> a verified
    checkpoint (the newest intact one for a directory of checkpoints)."""
    path = Path(path)
    if path.is_file() or (path / META).is_file():
        verify_checkpoint(path, checksums=verify)
        return path
    for ckpt_dir in (path, path / "checkpoints"):
        found = latest_checkpoint(ckpt_dir, verify) if ckpt_dir.is_dir() else None
        if found is not None:
            return found
    raise CheckpointError(
        f"no checkpoint at {path}: expected a step_*.pt file, a DCP checkpoint directory, "
        "a checkpoints/ directory or a run dir containing one"
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
    found = _checkpoints(ckpt_dir)
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


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | os.PathLike, step: int, keep: int = 1) -> Path:
    """Write ``state`` as ``step_<step>.pt`` with its manifest, atomically (call on rank 0 only).

    Raises :class:`NonFiniteCheckpointError` (nothing written) if ``state``'s model / EMA / optimizer
    tensors are not all finite, and a one-line :class:`CheckpointError` if the write fails."""
    ckpt_dir = Path(ckpt_dir)
    bad = check_finite_state(state)
    if bad:
        raise _refuse_non_finite(bad, ckpt_dir, step, len(bad))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / checkpoint_name(step, sharded=False)
    tmp = ckpt_dir / f".{final.name}.tmp{os.getpid()}"
    try:
        _save_synced(state, tmp)
        _write_manifest({final.name: tmp}, step, manifest_path(final))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        _remove(tmp)
        raise _write_failed(final, e) from e
    _publish(ckpt_dir, tmp, final, keep)
    return final


class PendingCheckpoint:
    """A sharded checkpoint whose tensors are being written (``trainer.async_checkpoint``: DCP's
    ``async_save`` writes them in a background thread while training goes on). :meth:`finish` waits for
    the write; only then does rank 0 write ``meta.pt`` and the manifest and publish the checkpoint, so
    ``last`` keeps naming the previous one until this one is complete and checksummed."""

    def __init__(self, future: Any, tmp: Path, final: Path, meta: bytes, step: int, keep: int, is_main: bool):
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
            if self.is_main:
                _save_synced(self.meta, self.tmp / META)
                files = {str(p.relative_to(self.tmp)): p for p in self.tmp.rglob("*") if p.is_file()}
                _write_manifest(files, self.step, self.tmp / MANIFEST)
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


def save_sharded_checkpoint(
    sharded: dict[str, Any],
    meta: dict[str, Any],
    ckpt_dir: str | os.PathLike,
    step: int,
    keep: int,
    is_main: bool,
    background: bool = False,
) -> Path | PendingCheckpoint:
    """Write a DCP checkpoint (call on every rank): ``sharded`` (model / EMA / optimizer state dicts
    of DTensors) through DCP, ``meta`` (everything else) as ``meta.pt`` and the manifest by rank 0.
    With ``background``, DCP copies the tensors and writes them in a background thread: the returned
    :class:`PendingCheckpoint` publishes the checkpoint when :meth:`~PendingCheckpoint.finish` is called.

    Every rank raises :class:`NonFiniteCheckpointError` (nothing written) if any rank's shards hold
    NaN or inf, and a one-line :class:`CheckpointError` if the write fails."""
    ckpt_dir = Path(ckpt_dir)
    bad = check_finite_state(sharded)
    n_bad = torch.tensor(float(len(bad)))
    if dist.is_available() and dist.is_initialized():
        n_bad = n_bad.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(n_bad)
    if n_bad.item() > 0:
        raise _refuse_non_finite(bad, ckpt_dir, step, int(n_bad.item()))
    final = ckpt_dir / checkpoint_name(step, sharded=True)
    tmp = ckpt_dir / f".{final.name}.tmp"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
    _barrier()
    buf = io.BytesIO()
    torch.save(meta, buf)  # now: the state may change while the tensors are written
    future = None
    try:
        with warnings.catch_warnings():  # DCP warns when it runs without a process group, which is fine
            warnings.filterwarnings("ignore", message=".*(no_dist|process group|single process).*")
            if background:
                response = dcp.async_save(sharded, checkpoint_id=tmp, process_group=_async_group())
                future = getattr(response, "upload_completion", response)
            else:
                dcp.save(sharded, checkpoint_id=tmp)
    except (OSError, RuntimeError, CheckpointException) as e:  # CheckpointException is a BaseException
        if is_main:
            _remove(tmp)
        raise _write_failed(final, e) from None
    pending = PendingCheckpoint(future, tmp, final, buf.getvalue(), step, keep, is_main)
    if background:
        return pending
    pending.finish()
    _barrier()
    return final


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


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint for inspection or evaluation, on CPU, in one process.

    ``path``: a checkpoint file, a DCP checkpoint directory, a ``checkpoints/`` directory or a run dir
    (its newest intact checkpoint). The checkpoint is verified against its manifest first
    (``verify=False`` checks sizes only, for a path :func:`latest_checkpoint` has just verified).
    Returns the checkpoint dict (see the module docstring), with ``model`` and ``ema`` as full,
    unsharded state dicts also for FSDP2 checkpoints, and ``path``.
    """
    path = resolve_checkpoint(path, verify)
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


def adopt_checkpoint(path: str | os.PathLike) -> Path:
    """Write the manifest of a checkpoint that has none (written before checksums existed), after
    loading it safely and checking that its model, EMA and optimizer are finite. Returns its path."""
    path = Path(path)
    if manifest_path(path).exists():
        raise CheckpointError(f"{path} already has a manifest; nothing to adopt")
    if path.is_dir():
        state = safe_load(path / META)
        state.update(_dcp_full_state(path, SHARDED_KEYS))
        files = {str(p.relative_to(path)): p for p in path.rglob("*") if p.is_file()}
    else:
        state = safe_load(path)
        files = {path.name: path}
    bad = check_finite_state(state)
    if bad:
        raise NonFiniteCheckpointError(f"not adopting {path}: NaN or inf in {', '.join(bad[:4])}")
    _write_manifest(files, int(state.get("step", -1)), manifest_path(path))
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
