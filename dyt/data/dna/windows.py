"""Pretraining windows of a reference genome, and shuffled copies of real regions (the
``janggu_shuffled`` classification source). (See ``dyt.data.dna``.)"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dyt.data.dna.genome import Genome, janggu_fasta, load_genome, read_fasta
from dyt.data.dna.vocab import (
    N_ID,
    reverse_complement,
)

# ---- pretraining windows -----------------------------------------------------------------------


def held_out(name: str, val_fraction: float) -> bool:
    """Deterministic record-level split: a stable hash of the record's name decides."""
    return zlib.crc32(name.encode()) % 10_000 < val_fraction * 10_000


def split_spans(genome: Genome, cfg: Any, split: str) -> np.ndarray:
    """(S, 2) [start, end) spans of ``split`` (``train`` / ``val``) in genome coordinates."""
    if cfg.get("intervals"):
        wanted = {"train": "train", "val": "valid"}[split]
        spans = []
        for lineno, line in enumerate(Path(cfg.intervals).expanduser().read_text().splitlines(), start=1):
            fields = line.split()
            if not fields or line.startswith(("#", "track", "browser")):
                continue
            if len(fields) < 4 or not fields[1].isdigit() or not fields[2].isdigit():
                raise ValueError(
                    f"{cfg.intervals}, line {lineno}: expected 'chrom start end split' (BED with a "
                    f"train/valid/test column, as upstream's sequences_human.bed); got {line!r}"
                )
            if fields[3] == wanted:
                offset, end = genome.record_span(fields[0])
                spans.append((offset + int(fields[1]), min(offset + int(fields[2]), end)))
        return np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    keep = [held_out(name, float(cfg.val_fraction)) == (split == "val") for name in genome.names]
    return np.stack([genome.starts[:-1], genome.starts[1:]], axis=1)[keep]


class GenomeWindows(Dataset):
    """Windows of ``length`` tokens drawn from the N-free parts of ``spans``; see the module docstring.

    Item ``i`` is an int64 tensor (length,). Training windows depend on ``(seed, epoch, i)`` (call
    ``set_epoch``); with ``fixed=True`` (validation) on ``(seed, i)`` only.
    """

    def __init__(
        self,
        genome: Genome,
        spans: np.ndarray,
        length: int,
        num_samples: int | None,
        seed: int,
        rc_aug: bool = False,
        fixed: bool = False,
    ) -> None:
        self.genome, self.length, self.seed, self.rc_aug, self.fixed = genome, int(length), seed, rc_aug, fixed
        self.epoch = 0
        runs = genome.runs
        pieces = []
        for start, end in spans:  # intersect every span with the runs it overlaps
            lo, hi = np.searchsorted(runs[:, 1], start, "right"), np.searchsorted(runs[:, 0], end, "left")
            part = runs[lo:hi].copy()
            part[:, 0], part[:, 1] = np.maximum(part[:, 0], start), np.minimum(part[:, 1], end)
            pieces.append(part)
        runs = np.concatenate(pieces) if pieces else np.zeros((0, 2), np.int64)
        counts = runs[:, 1] - runs[:, 0] - self.length + 1
        self.starts, self.cum = runs[counts > 0, 0], np.cumsum(counts[counts > 0])
        if not len(self.cum):
            raise ValueError(
                f"no stretch of {self.length} bases without N in this split of the genome "
                f"({len(spans)} spans); lower data.seq_len or use a larger genome / split"
            )
        self.num_samples = int(num_samples) if num_samples else max(1, int(self.cum[-1]) // self.length)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        rng = np.random.default_rng([self.seed, 0 if self.fixed else self.epoch, i])
        k = int(rng.integers(int(self.cum[-1])))  # uniform over every valid window start
        r = int(np.searchsorted(self.cum, k, "right"))
        start = int(self.starts[r] + k - (self.cum[r - 1] if r else 0))
        ids = np.asarray(self.genome.ids[start : start + self.length])
        if self.rc_aug and rng.random() < 0.5:
            ids = reverse_complement(ids)
        return torch.from_numpy(ids.astype(np.int64))


def build_genome_windows(cfg: Any, split: str, extra_tokens: int, seed: int) -> GenomeWindows:
    """Pretraining windows of ``data.seq_len + extra_tokens`` tokens (1 extra for next-token targets)."""
    genome = load_genome(cfg)
    spans = split_spans(genome, cfg, split)
    train = split == "train"
    return GenomeWindows(
        genome,
        spans,
        int(cfg.seq_len) + extra_tokens,
        cfg.get("samples_per_epoch") if train else cfg.val_samples,
        seed,
        rc_aug=bool(cfg.get("rc_aug", False)) and train,
        fixed=not train,
    )


# ---- shuffled sequences (the janggu_shuffled classification source) ---------------------------


def dinucleotide_shuffle(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random sequence with exactly the dinucleotide counts (and first and last base) of ``ids``
    (Altschul and Erickson 1985): a random Eulerian walk on the graph of observed base transitions.
    The last exit of every base is drawn first so that they form a tree into the final base, which
    guarantees the walk uses every transition."""
    seq = ids.tolist()
    if len(seq) < 3:
        return ids.copy()
    exits: dict[int, list[int]] = {}
    for a, b in zip(seq[:-1], seq[1:], strict=True):
        exits.setdefault(a, []).append(b)
    last = seq[-1]
    while True:  # draw last exits until each base's chain of last exits reaches the final base
        final = {v: out[rng.integers(len(out))] for v, out in exits.items() if v != last}
        if all(_reaches(v, last, final) for v in final):
            break
    for v, out in exits.items():
        if v in final:
            out.remove(final[v])
            rng.shuffle(out)
            out.append(final[v])
        else:
            rng.shuffle(out)
    walk, position = [seq[0]], {v: 0 for v in exits}
    while walk[-1] in exits and position[walk[-1]] < len(exits[walk[-1]]):
        v = walk[-1]
        walk.append(exits[v][position[v]])
        position[v] += 1
    return np.asarray(walk, dtype=ids.dtype)


def _reaches(v: int, target: int, final: dict[int, int]) -> bool:
    seen = set()
    while v != target:
        if v in seen or v not in final:
            return False
        seen.add(v)
        v = final[v]
    return True


SHUFFLES = ("mononucleotide", "dinucleotide")


def _janggu_shuffled(cfg: Any, split: str, seed: int) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Real regions (label 1) and one shuffled copy of each (label 0): ``data.shuffle`` keeps the base
    counts (``mononucleotide``) or also the dinucleotide counts (``dinucleotide``, the harder control).
    The split holds out records by name exactly as pretraining does, so test regions were never
    pretrained on."""
    if cfg.shuffle not in SHUFFLES:
        raise ValueError(f"unknown data.shuffle {cfg.shuffle!r}; valid values are: {', '.join(SHUFFLES)}")
    seqs, labels = [], []
    for path in janggu_fasta():
        for name, ids in read_fasta(path):
            if held_out(name, float(cfg.val_fraction)) != (split == "val") or (ids == N_ID).any():
                continue
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            shuffled = dinucleotide_shuffle(ids, rng) if cfg.shuffle == "dinucleotide" else rng.permutation(ids)
            seqs += [ids, shuffled]
            labels += [1, 0]
    return seqs, labels, ["shuffled", "real"]
