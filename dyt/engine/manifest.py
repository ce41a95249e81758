"""Checkpoint manifests: the size and sha256 of every file of a checkpoint, written before it is renamed
into place and checked before every load (see :mod:`dyt.engine.checkpoint`).

A single file ``step_N.pt`` has ``step_N.pt.manifest.json`` beside it; a DCP directory holds its own
``manifest.json``. A manifest records ``format``, ``step``, ``finite: true`` and ``files``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dyt.engine.safe_read import CheckpointError, SafeFileSystemReader
from dyt.io import atomic_write_json

MANIFEST = "manifest.json"  # inside a DCP directory; "<name>.manifest.json" beside a single file
MANIFEST_FORMAT = 1


def manifest_path(ckpt: Path) -> Path:
    """Where the manifest of checkpoint ``ckpt`` (a ``.pt`` file or a DCP directory) lives."""
    return ckpt.with_name(ckpt.name + "." + MANIFEST) if ckpt.suffix == ".pt" else ckpt / MANIFEST


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(files: dict[str, Path], step: int, dest: Path) -> None:
    """Hash ``files`` (name in the manifest -> file on disk) and write the manifest to ``dest``."""
    entries = {name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for name, p in sorted(files.items())}
    atomic_write_json(dest, {"format": MANIFEST_FORMAT, "step": step, "finite": True, "files": entries})


def directory_files(directory: Path) -> dict[str, Path]:
    """The files of a DCP directory by their name in its manifest (the path inside it)."""
    return {str(p.relative_to(directory)): p for p in directory.rglob("*") if p.is_file()}


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
