"""Loading one split of a Hugging Face ``datasets`` data set, a hub id or a local copy in the hub's layout
(used by dyt/data/audio_hub.py and dyt/data/dna_hub.py)."""

from __future__ import annotations

from pathlib import Path


def one_line(e: BaseException) -> str:
    """An exception's message on one line (for one-line ``error:`` messages)."""
    return " ".join(str(e).split())


def load_split(path: str, config: str | None, split: str, cache_dir: str | None, splits_hint: str):
    """``datasets.load_dataset(path, config, split=split)``; ``path`` may be a local directory holding the
    hub's files (its card and parquet files), which loads the same way offline. A split the data set
    lacks is refused in one line naming its splits and ``splits_hint`` (what the source should have)."""
    import datasets

    local = Path(path).expanduser()
    try:
        return datasets.load_dataset(str(local) if local.exists() else path, config, split=split, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError) as e:  # no such hub id / directory, or offline without a copy
        raise FileNotFoundError(
            f"data.hf_dataset={path!r}: {one_line(e)}; give a hub id (cached, for offline use) or a local "
            f"directory in the hub's layout"
        ) from e
    except ValueError as e:  # datasets: Unknown split "x". Should be one of [...]
        if "split" not in str(e).lower():
            raise
        raise ValueError(
            f"data.hf_dataset={path!r} (config {config!r}) has no split {split!r}: {one_line(e).rstrip('.')}; "
            f"{splits_hint}"
        ) from e
