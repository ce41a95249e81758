"""Nucleotide tokens: HyenaDNA's and Caduceus's ids, encode/decode, complements. (See ``dyt.data.dna``.)"""

from __future__ import annotations

import numpy as np
import torch

# ---- vocabulary --------------------------------------------------------------------------------

SPECIALS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
BASES = "ACGTN"
CLS, SEP, BOS, MASK, PAD, RESERVED, UNK = range(len(SPECIALS))
BASE_IDS = {base: len(SPECIALS) + i for i, base in enumerate(BASES)}  # A=7, C=8, G=9, T=10, N=11
N_ID = BASE_IDS["N"]
VOCAB_SIZE = 16  # 12 ids padded to a multiple of 8
IUPAC_AMBIGUOUS = "RYKMSWBDHV"  # FASTA ambiguity codes; a reference genome's are read as N
_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
_INVALID = 255


def complement_ids(vocab_size: int = VOCAB_SIZE) -> torch.Tensor:
    """(vocab_size,) int64: the id of each id's complement base (non-bases map to themselves)."""
    ids = torch.arange(vocab_size)
    for base, other in _COMPLEMENT.items():
        ids[BASE_IDS[base]] = BASE_IDS[other]
    return ids


def _table(extra: str = "") -> bytes:
    table = bytearray([_INVALID]) * 256
    for base, i in BASE_IDS.items():
        table[ord(base)] = table[ord(base.lower())] = i
    for code in extra:
        table[ord(code)] = table[ord(code.lower())] = N_ID
    return bytes(table)


_SEQUENCE_TABLE = _table()  # what a sequence to classify may hold
_FASTA_TABLE = _table(IUPAC_AMBIGUOUS)  # a reference genome may also hold ambiguity codes


def encode(seq: str, where: str = "sequence") -> np.ndarray:
    """Bases (any case) -> uint8 token ids. Anything but A, C, G, T, N raises, naming ``where``."""
    ids = seq.encode("latin-1", errors="replace").translate(_SEQUENCE_TABLE)
    bad = ids.find(bytes([_INVALID]))
    if bad >= 0:
        raise ValueError(
            f"{where}: unknown base {seq[bad]!r} at position {bad}; a DNA sequence holds only "
            f"A, C, G, T and N (any case); fix or drop the sequence"
        )
    return np.frombuffer(ids, dtype=np.uint8)


def decode(ids: torch.Tensor | np.ndarray) -> str:
    """Token ids -> bases; special tokens are skipped."""
    return "".join(BASES[i - len(SPECIALS)] for i in np.asarray(ids).tolist() if len(SPECIALS) <= i < 12)


def reverse_complement(ids: np.ndarray) -> np.ndarray:
    """Reverse complement of a token-id array."""
    return complement_ids().numpy().astype(np.uint8)[ids[::-1]]
