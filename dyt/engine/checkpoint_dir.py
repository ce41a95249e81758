"""The ``checkpoints/`` directory of a run: checkpoint names, ``last``, and which checkpoint to resume
from (the newest intact one, with a one-line warning for each damaged one skipped).

Names: ``step_<8 digits>.pt`` (one file) or ``step_<8 digits>/`` (a DCP directory); ``last`` names the
newest complete checkpoint. Intact means: it matches its manifest (:mod:`dyt.engine.manifest`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from dyt.engine.manifest import verify_checkpoint
from dyt.engine.safe_read import CheckpointError, UntrustedContentError

LAST = "last"
META = "meta.pt"  # the non-sharded part of a DCP checkpoint
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")


def warn(message: str) -> None:
    """One line on stderr (the fallbacks of this module are worth seeing but not worth stopping for)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def checkpoint_name(step: int, sharded: bool) -> str:
    return f"step_{step:08d}" + ("" if sharded else ".pt")


def _checkpoints_in(ckpt_dir: Path) -> list[Path]:
    """Checkpoints by name, oldest first (temporary names and manifests never match)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint in ``ckpt_dir`` by name, oldest first (none when the directory does not exist)."""
    return _checkpoints_in(Path(ckpt_dir))


def named_by_last(ckpt_dir: Path) -> tuple[Path | None, str | None]:
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
    found = _checkpoints_in(ckpt_dir)
    named, last_problem = named_by_last(ckpt_dir)
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
    for ckpt in reversed(_checkpoints_in(Path(ckpt_dir))):
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
