"""DNA data held on the Hugging Face hub: GenomicBenchmarks as published there, and a reference genome
FASTA stored in a hub dataset repo. Both feed the readers of dyt/data/dna/ unchanged.

**GenomicBenchmarks** (``data.source=genomic_benchmarks_hub``): the benchmark's authors publish each
dataset as ``katarinagresova/Genomic_Benchmarks_<dataset>`` (e.g.
https://huggingface.co/datasets/katarinagresova/Genomic_Benchmarks_human_nontata_promoters): parquet
files ``data/train-*.parquet`` and ``data/test-*.parquet``, columns ``seq`` (string) and ``label``
(int64, 0 .. classes - 1). ``data.hf_dataset`` is that id or a local directory in the same layout (what
``datasets.load_dataset`` reads offline); the ``test`` split is the evaluation set, as for the local layout.

**Reference genome** (``data.fasta=hf://datasets/<owner>/<repo>[@<revision>]/<path>``): a FASTA file
(``.fa`` / ``.fa.gz``) in a hub dataset repo, e.g. Ensembl's GRCh38 primary assembly in
https://huggingface.co/datasets/pzweuj/SchemaBio_Bundle (``hg38/Homo_sapiens.GRCh38.dna.primary_assembly.fa.gz``).
It is fetched with ``huggingface_hub.hf_hub_download`` into the hub cache (offline: read from it) and then
parsed and cached exactly as a local FASTA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dyt.data.dna.vocab import encode
from dyt.data.hub import load_split, one_line

HF_PREFIX = "hf://datasets/"
SPLITS = {"train": "train", "val": "test"}


# ---- GenomicBenchmarks -------------------------------------------------------------------------


def hub_benchmark(cfg: Any, split: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    """(token ids, labels, class names) of ``split`` (``train`` / ``val`` = the hub's ``test``)."""
    path, name = str(cfg.hf_dataset), SPLITS[split]
    hint = "GenomicBenchmarks on the hub has train and test splits (katarinagresova/Genomic_Benchmarks_<dataset>)"
    ds = load_split(path, cfg.get("hf_config"), name, cfg.get("hf_cache_dir"), hint)
    seq_key, label_key = cfg.seq_key, cfg.label_key
    missing = sorted({seq_key, label_key} - set(ds.column_names))
    if missing:
        raise ValueError(
            f"data.hf_dataset={path!r} split {name!r} lacks column(s) {missing}; its columns are "
            f"{ds.column_names} (set data.seq_key / data.label_key; GenomicBenchmarks has seq, label)"
        )
    if len(ds) == 0:
        raise ValueError(f"data.hf_dataset={path!r} split {name!r} has no rows; a benchmark split needs sequences")
    where = f"{path} {name}"
    labels = list(ds[label_key])
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels):
        raise ValueError(f"{where}: column {label_key!r} must hold integer class ids 0, 1, ...; found {labels[0]!r}")
    classes = sorted(set(labels))
    if classes != list(range(len(classes))) or len(classes) < 2:
        raise ValueError(f"{where}: labels are {classes[:10]}; expected class ids 0 .. n-1 with at least two classes")
    seqs = [encode(s or "", where=f"{where} row {i}") for i, s in enumerate(ds[seq_key])]
    empty = next((i for i, s in enumerate(seqs) if len(s) == 0), None)
    if empty is not None:
        raise ValueError(f"{where} row {empty}: the sequence is empty; every row needs bases")
    return seqs, [int(v) for v in labels], [str(c) for c in classes]


# ---- reference genome --------------------------------------------------------------------------


def is_hub_path(source: Any) -> bool:
    return isinstance(source, str) and source.startswith("hf://")


def hub_file(url: str) -> Path:
    """The local path of ``hf://datasets/<owner>/<repo>[@<revision>]/<file>``, fetched into the hub cache."""
    from huggingface_hub import hf_hub_download

    parts = url[len(HF_PREFIX) :].split("/", 2) if url.startswith(HF_PREFIX) else []
    if len(parts) < 3 or not all(parts):
        raise ValueError(
            f"data.fasta={url!r} is not a hub file path; write hf://datasets/<owner>/<repo>/<path to .fa or .fa.gz> "
            f"(a revision as <repo>@<revision>)"
        )
    repo, revision = parts[1].split("@", 1) if "@" in parts[1] else (parts[1], None)
    try:
        return Path(hf_hub_download(f"{parts[0]}/{repo}", parts[2], repo_type="dataset", revision=revision))
    except Exception as e:  # huggingface_hub's EntryNotFound / RepositoryNotFound / LocalEntryNotFound errors
        raise FileNotFoundError(
            f"cannot fetch data.fasta={url!r}: {type(e).__name__}: {one_line(e)[:300]}; check the repo and file "
            f"name (and the network, or HF_HUB_OFFLINE with a cached copy), or download it and give its local path"
        ) from e
