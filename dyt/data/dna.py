"""Single-nucleotide character vocabulary shared by HyenaDNA and Caduceus.

The ids are those of HyenaDNA's and Caduceus's ``CharacterTokenizer`` (hyena-dna
``standalone_hyenadna.py``; caduceus ``tokenization_caduceus.py``): seven special tokens, then the bases
A, C, G, T and N. The model vocabulary is padded to a multiple of 8 (upstream ``pad_vocab_size_multiple:
8``), so 12 ids become 16 embedding rows. The complement map (A<->T, C<->G, every other id to itself)
is what Caduceus's reverse-complement parameter sharing uses.
"""

from __future__ import annotations

import torch

SPECIALS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
BASES = "ACGTN"
CLS, SEP, BOS, MASK, PAD, RESERVED, UNK = range(len(SPECIALS))
BASE_IDS = {base: len(SPECIALS) + i for i, base in enumerate(BASES)}  # A=7, C=8, G=9, T=10, N=11
NUM_TOKENS = len(SPECIALS) + len(BASES)  # 12
VOCAB_SIZE = 16  # NUM_TOKENS padded to a multiple of 8
_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def complement_ids(vocab_size: int = VOCAB_SIZE) -> torch.Tensor:
    """(vocab_size,) int64: the id of each id's complement base (non-bases map to themselves)."""
    ids = torch.arange(vocab_size)
    for base, other in _COMPLEMENT.items():
        ids[BASE_IDS[base]] = BASE_IDS[other]
    return ids
