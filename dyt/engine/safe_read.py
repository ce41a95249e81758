"""Reading checkpoints without trusting their bytes: nothing on the load path can execute code.

Single files load with ``torch.load(weights_only=True)`` (:func:`safe_load`). DCP (FSDP2) checkpoints
keep their metadata in a pickle (``.metadata``) that DCP itself reads with plain ``pickle``, and load
their non-tensor entries with ``weights_only=False``: :class:`SafeFileSystemReader` unpickles the metadata
with an allow-list of DCP's own classes, and :class:`SafeLoadPlanner` loads the other entries with
``weights_only=True``. A crafted file is refused with :class:`CheckpointError` naming what it asked for.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written: unreadable, damaged, unsafe, not matching the
    model, non-finite, or a failed write."""


class UntrustedContentError(CheckpointError):
    """A file that asks to run code (a pickled global other than tensors, containers and DCP's metadata
    classes). Never a fallback: damage is skipped for an older checkpoint, tampering stops the run
    (docs/guarantees.md, "Untrusted content")."""


_DCP_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # returns only torch.layout objects, by name
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata``: DCP's own metadata dataclasses, ``torch.Size``, dtypes, layouts,
    paths and plain containers. Any other global (``os.system``, ``builtins.eval``, ...) is refused
    before it is looked up, so a crafted file cannot run code."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UntrustedContentError(
            f"refusing to read DCP metadata {self.path}: it asks for the global {module}.{name}, which is "
            "not part of DCP's metadata and could execute code. Only load checkpoints from a source you trust"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UntrustedContentError(f"refusing to read DCP metadata {self.path}: it holds a persistent reference")


class SafeFileSystemReader(dcp.FileSystemReader):
    """``dcp.FileSystemReader`` whose ``read_metadata`` uses :class:`_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _MetadataUnpickler(f, path).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"DCP metadata {path} is unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"DCP metadata {path} holds a {type(metadata).__name__}, not DCP Metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that reads DCP's non-tensor entries (e.g. optimizer hyperparameters) with
    ``torch.load(weights_only=True)`` instead of DCP's ``weights_only=False``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        obj = safe_load(value, f"the DCP entry {fqn}")
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def first_failure(e: CheckpointException) -> BaseException:
    """The first rank's exception inside DCP's ``CheckpointException`` (which lists every rank's)."""
    failures = getattr(e, "failures", None) or {}
    for failure in failures.values():
        return failure[0] if isinstance(failure, tuple) else failure
    return e


def dcp_load(state: dict[str, Any], path: Path, what: str) -> None:
    """``dcp.load`` with the safe reader and planner; any failure becomes one-line :class:`CheckpointError`."""
    try:
        with warnings.catch_warnings():  # DCP warns that it loads in one process, which is the intent
            warnings.filterwarnings("ignore", message=".*(load in a single process|no_dist|process group).*")
            dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner())
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        cause = first_failure(e) if isinstance(e, CheckpointException) else e
        if isinstance(cause, CheckpointError):
            raise type(cause)(str(cause)) from None
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise CheckpointError(f"cannot load DCP checkpoint {path} {what} ({type(cause).__name__}: {first})") from None


def safe_load(path: Path | io.BytesIO, name: str | None = None) -> Any:
    """``torch.load(weights_only=True)`` on CPU; :class:`CheckpointError` naming the file (or ``name``)
    if it fails."""
    name = name or str(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # weights_only names the global it blocked (e.g. "GLOBAL posix.system"); garbage fails otherwise.
        blocked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line]
        if blocked:
            raise UntrustedContentError(
                f"refusing to load {name}: it holds pickled objects other than tensors and "
                "plain containers, which could execute code (torch.load with "
                f"weights_only=True: {blocked[0]})"
            ) from None
        detail = next((line.strip() for line in str(e).splitlines()[::-1] if line.strip()), "")
        raise CheckpointError(
            f"checkpoint {name} is unreadable (truncated or corrupt; {type(e).__name__}: {detail}). "
            "Remove it to fall back to the previous checkpoint, or remove the run dir to start afresh"
        ) from None
