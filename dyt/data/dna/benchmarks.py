"""Sequence classification sets: GenomicBenchmarks (read from its own layout) and the offline
``janggu_shuffled`` demo. (See ``dyt.data.dna``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dyt.data.dna.vocab import (
    PAD,
    encode,
)
from dyt.data.dna.windows import (
    _janggu_shuffled,
)


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
