"""Datasets and loaders, one file per data family."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(override: str | os.PathLike | None = None) -> Path:
    """Where the project keeps data it makes or caches (the DNA genome, token files, the speech demo):
    ``override`` (a config's ``cache_dir``) if given, else ``$DYT_DATA_DIR``, else ``~/.cache/dyt``."""
    return Path(override or os.environ.get("DYT_DATA_DIR") or "~/.cache/dyt").expanduser()
