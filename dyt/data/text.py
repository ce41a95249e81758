"""Language-model data: documents -> tokens -> one memory-mapped token file -> fixed-length sequences.

Sources (``data.source``):
- ``stdlib``: the offline default, real text on every machine: the Python standard library's ``.py``
  sources (code, comments and docstrings), one document per file; test packages and ``encodings``
  (1.4 MB of generated codec tables) are left out, ~10.7 MB remain.
- a Hugging Face ``datasets`` hub id (streamed; the paper used The Pile), or
- local files: a ``.parquet`` / ``.jsonl`` / ``.json`` / ``.txt`` file, a glob, or a directory of them
  (``val_split: null``: the validation documents are held out by a hash of their position).

Tokenizer (``data.tokenizer``): a ``tokenizer.json`` path, a local directory or a hub id loaded with
``transformers`` (the paper used the Llama-2 tokenizer), or null: a byte-level BPE of ``data.vocab_size``
trained with ``tokenizers`` on the training documents and cached next to the token files.

Every document is tokenized, followed by EOS (preceded by BOS when the tokenizer has one), and
concatenated into ``<cache>/<key>/<split>.bin`` (uint16 or uint32) with a ``.json`` sidecar. Sequence
``i`` is tokens ``[i*L, i*L + L + 1)``: the model reads the first ``L`` and predicts the last ``L``. The
dataset is map-style and item ``i`` depends on nothing else, so the trainer's sharded sampler resumes
at the exact data position. ``<key>`` hashes every setting that changes the tokens, so a changed
config never reads a stale file. Build large corpora ahead of training with ``scripts/pretokenize.py``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from dyt.data import data_root

FORMAT_VERSION = 1
EOS = "<|endoftext|>"
SPLITS = ("train", "val")
LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
_BATCH_DOCS = 256  # documents tokenized per call (the Rust tokenizer parallelises inside a batch)


# ---- documents ---------------------------------------------------------------------------------


def _held_out(doc_id: str, val_fraction: float) -> bool:
    """Deterministic document-level split: a stable hash of the document's id decides."""
    return zlib.crc32(doc_id.encode()) % 10_000 < val_fraction * 10_000


def stdlib_documents() -> list[tuple[str, Path]]:
    """(relative path, path) of the standard library's ``.py`` files, sorted, without test packages and codecs."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "encodings") or {"test", "tests", "idle_test"} & set(rel.parts):
            continue
        files.append((rel.as_posix(), path))
    return files


def _local_files(source: str) -> list[str]:
    path = Path(source).expanduser()
    files = (
        sorted(str(p) for p in path.rglob("*") if p.suffix in LOCAL_BUILDERS)
        if path.is_dir()
        else sorted(glob.glob(str(path)))
    )
    if not files:
        raise FileNotFoundError(
            f"data.source={source!r} matches no file; give a hub id, 'stdlib', or local "
            f"{'/'.join(LOCAL_BUILDERS)} files (a file, a glob or a directory)"
        )
    suffixes = {Path(f).suffix for f in files}
    if len(suffixes) != 1 or not suffixes <= set(LOCAL_BUILDERS):
        raise ValueError(
            f"data.source={source!r} mixes or has unsupported file types {sorted(suffixes)}; "
            f"use one of {', '.join(LOCAL_BUILDERS)}"
        )
    return files


def _hf_documents(cfg: Any, split: str) -> Iterator[str]:
    """Texts of a ``datasets`` hub id or local files for ``split``, holding out documents when needed."""
    import datasets

    source = str(cfg.source)
    hf_split = cfg.train_split if split == "train" or cfg.val_split is None else cfg.val_split
    is_local = Path(source).expanduser().exists() or any(ch in source for ch in "*?")
    if is_local:
        if cfg.val_split is not None:
            raise ValueError(
                f"data.source={source!r} is local files, which have no named splits: set "
                f"data.val_split=null (data.val_fraction of the documents is held out)"
            )
        files = _local_files(source)
        builder = LOCAL_BUILDERS[Path(files[0]).suffix]
        by_file = {"sample_by": "document"} if builder == "text" else {}  # a .txt file is one document
        ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", **by_file)
    else:
        ds = datasets.load_dataset(source, cfg.get("hf_config"), split=hf_split, streaming=True)
    for i, row in enumerate(ds):
        if cfg.val_split is None and _held_out(str(i), cfg.val_fraction) != (split == "val"):
            continue
        yield row[cfg.text_key]


def iter_documents(cfg: Any, split: str) -> Iterator[str]:
    """The texts of ``split`` (``train`` or ``val``) of the configured source, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
    max_docs = cfg.get("max_docs")
    if cfg.source == "stdlib":
        docs: Iterable[str] = (
            path.read_text(encoding="utf-8", errors="replace")
            for rel, path in stdlib_documents()
            if _held_out(rel, cfg.val_fraction) == (split == "val")
        )
    else:
        docs = _hf_documents(cfg, split)
    for i, text in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            return
        yield text


# ---- tokenizer ---------------------------------------------------------------------------------


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, path: Path):
    """A byte-level BPE of ``vocab_size`` (EOS included) trained on ``texts``, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)


def load_tokenizer(name_or_path: str | os.PathLike):
    """A ``transformers`` fast tokenizer from a ``tokenizer.json`` file, a directory or a hub id."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if str(name_or_path).endswith(".json"):
        return PreTrainedTokenizerFast(tokenizer_file=str(name_or_path), eos_token=EOS)
    return AutoTokenizer.from_pretrained(str(name_or_path))


# ---- token files -------------------------------------------------------------------------------


def _cache_root(cfg: Any) -> Path:
    return data_root(cfg.get("cache_dir")) / "text"


def corpus_key(cfg: Any) -> str:
    """A hash of every setting that changes the tokens (the stdlib corpus also depends on Python's version)."""
    keys = {
        k: cfg.get(k)
        for k in (
            "source",
            "hf_config",
            "text_key",
            "train_split",
            "val_split",
            "val_fraction",
            "tokenizer",
            "tokenizer_train_docs",
            "vocab_size",
            "max_docs",
        )
    }
    keys["format"] = FORMAT_VERSION
    if cfg.source == "stdlib":
        keys["python"] = sys.version
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def corpus_dir(cfg: Any) -> Path:
    """Where the token files and the locally trained tokenizer of this data config live."""
    return _cache_root(cfg) / f"{cfg.name}-{corpus_key(cfg)}"


def tokenizer_path(cfg: Any) -> str:
    """The tokenizer of this data config: ``data.tokenizer``, or the locally trained BPE (trained if missing)."""
    if cfg.get("tokenizer"):
        return str(cfg.tokenizer)
    path = corpus_dir(cfg) / "tokenizer.json"
    if not path.exists():
        limit = cfg.get("tokenizer_train_docs")
        docs = (text for i, text in enumerate(iter_documents(cfg, "train")) if limit is None or i < limit)
        train_bpe_tokenizer(docs, int(cfg.vocab_size), path)
    return str(path)


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_token_file(cfg: Any, split: str) -> Path:
    """Tokenize ``split`` into ``<corpus_dir>/<split>.bin`` (+ ``.json``), streaming, written atomically."""
    tok = load_tokenizer(tokenizer_path(cfg))
    encode = tok.backend_tokenizer.encode_batch_fast  # ids only, no offsets: the fastest path
    vocab = len(tok)
    if vocab > int(cfg.vocab_size):
        raise ValueError(
            f"the tokenizer {cfg.get('tokenizer') or 'trained locally'} has {vocab} tokens but "
            f"data.vocab_size={cfg.vocab_size}; set data.vocab_size to at least {vocab}"
        )
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; documents could not be separated")
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    prefix = [tok.bos_token_id] if tok.bos_token_id is not None and tok.bos_token_id != tok.eos_token_id else []
    out = corpus_dir(cfg) / f"{split}.bin"
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    num_tokens = num_docs = 0
    with open(tmp, "wb") as f:
        for batch in _batches(iter_documents(cfg, split), _BATCH_DOCS):
            for encoding in encode(batch, add_special_tokens=False):
                ids = prefix + encoding.ids + [tok.eos_token_id]
                np.asarray(ids, dtype=dtype).tofile(f)
                num_tokens += len(ids)
            num_docs += len(batch)
    meta = {
        "dtype": np.dtype(dtype).name,
        "num_tokens": num_tokens,
        "num_docs": num_docs,
        "vocab_size": vocab,
        "tokenizer": tokenizer_path(cfg),
        "source": str(cfg.source),
        "split": split,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out)  # the .bin appears last: its presence means the pair is complete
    return out


def ensure_token_file(cfg: Any, split: str) -> Path:
    """The token file of ``split``, built by rank 0 if missing while the other ranks wait."""
    path = corpus_dir(cfg) / f"{split}.bin"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and not path.exists():
        write_token_file(cfg, split)
    if dist.is_initialized():
        dist.barrier()
    return path


# ---- dataset -----------------------------------------------------------------------------------


class PackedTokens(Dataset):
    """Fixed-length sequences over a memory-mapped token file; item ``i`` is a (seq_len + 1,) int64 tensor
    of tokens ``[i*seq_len, (i+1)*seq_len + 1)`` (inputs and next-token targets overlap by one)."""

    def __init__(self, path: str | os.PathLike, seq_len: int) -> None:
        self.path, self.seq_len = Path(path), int(seq_len)
        self.meta = json.loads(self.path.with_suffix(".json").read_text())
        self.tokens = np.memmap(self.path, dtype=self.meta["dtype"], mode="r")
        if len(self) == 0:
            raise ValueError(
                f"{self.path} holds {len(self.tokens)} tokens, fewer than one sequence of "
                f"seq_len={seq_len} + 1; lower data.seq_len or use more text"
            )

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        start = i * self.seq_len
        return torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))


def build_text_dataset(cfg: Any, split: str) -> PackedTokens:
    """The packed ``split`` of the ``configs/data/text*.yaml`` config ``cfg`` (built and cached on first use)."""
    return PackedTokens(ensure_token_file(cfg, split), cfg.seq_len)
