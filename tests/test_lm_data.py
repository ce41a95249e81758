"""Language-model data (dyt/data/text.py): corpora, tokenizer, packed memory-mapped sequences, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dyt.data.text import PackedTokens, build_text_dataset, corpus_dir, iter_documents, load_tokenizer
from dyt.engine.sampler import ShardedBatchSampler


def text_cfg(cache, **overrides):
    cfg = OmegaConf.load("configs/data/text_stdlib.yaml")
    cfg.merge_with(
        {
            "cache_dir": str(cache),
            "vocab_size": 300,
            "seq_len": 32,
            "max_docs": 20,
            "tokenizer_train_docs": 20,
            **overrides,
        }
    )
    return cfg


@pytest.fixture(scope="module")
def stdlib_cfg(tmp_path_factory):
    return text_cfg(tmp_path_factory.mktemp("cache"))


def test_stdlib_corpus_is_real_python_text_split_by_document(stdlib_cfg):
    cfg = OmegaConf.merge(stdlib_cfg, {"max_docs": None})
    train, val = list(iter_documents(cfg, "train")), list(iter_documents(cfg, "val"))
    assert len(train) > 300 and 0 < len(val) < len(train) / 20
    assert not set(train) & set(val)
    assert sum("def " in doc for doc in train) > len(train) / 2


def test_sequences_tile_the_token_file_and_decode_to_the_corpus(stdlib_cfg):
    data = build_text_dataset(stdlib_cfg, "train")
    tokens = np.memmap(data.path, dtype=data.meta["dtype"], mode="r")
    assert len(data) == (len(tokens) - 1) // 32 and data[0].dtype == torch.int64 and data[0].shape == (33,)
    for i in (0, 1, len(data) - 1):
        assert torch.equal(data[i], torch.from_numpy(tokens[i * 32 : i * 32 + 33].astype(np.int64)))
        if i + 1 < len(data):
            assert data[i][-1] == data[i + 1][0]  # targets of one sequence continue into the next
    tok = load_tokenizer(data.meta["tokenizer"])
    first_doc = next(iter_documents(stdlib_cfg, "train"))
    assert tok.decode(tokens[:200].tolist()) == first_doc[: len(tok.decode(tokens[:200].tolist()))]
    assert data.meta["num_docs"] == 20 and (tokens == tok.eos_token_id).sum() == 20


def test_token_files_are_cached_and_keyed_by_their_settings(stdlib_cfg):
    first = build_text_dataset(stdlib_cfg, "val")
    mtime = first.path.stat().st_mtime_ns
    assert build_text_dataset(stdlib_cfg, "val").path.stat().st_mtime_ns == mtime
    assert corpus_dir(OmegaConf.merge(stdlib_cfg, {"vocab_size": 400})) != corpus_dir(stdlib_cfg)
    assert corpus_dir(OmegaConf.merge(stdlib_cfg, {"seq_len": 64})) == corpus_dir(stdlib_cfg)  # packing only


def test_resume_continues_at_the_exact_data_position(stdlib_cfg):
    """Killed after 3 batches and resumed from batch 3, a rank sees exactly the uninterrupted sequence."""
    data = build_text_dataset(stdlib_cfg, "train")
    for rank in (0, 1):
        sampler = ShardedBatchSampler(len(data), batch_size=4, rank=rank, world_size=2, seed=7)
        sampler.set_epoch(1)
        uninterrupted = [torch.stack([data[i] for i in batch]) for batch in sampler]
        reopened = PackedTokens(data.path, 32)  # a new process maps the file again
        sampler.set_epoch(1, start_batch=3)
        resumed = [torch.stack([reopened[i] for i in batch]) for batch in sampler]
        assert len(resumed) == len(uninterrupted) - 3
        assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted[3:]))


def test_local_jsonl_source_with_a_held_out_split(tmp_path):
    docs = [{"text": f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 5} for i in range(200)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = text_cfg(
        tmp_path / "cache",
        source=str(tmp_path / "corpus.jsonl"),
        val_fraction=0.1,
        max_docs=None,
        tokenizer_train_docs=None,
    )
    train, val = build_text_dataset(cfg, "train"), build_text_dataset(cfg, "val")
    assert train.meta["num_docs"] + val.meta["num_docs"] == 200 and 5 < val.meta["num_docs"] < 40


def test_a_missing_local_source_says_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="parquet"):
        list(iter_documents(text_cfg(tmp_path, source=str(tmp_path / "none*.jsonl")), "train"))


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(stdlib_cfg, tmp_path):
    trained = build_text_dataset(stdlib_cfg, "val").meta["tokenizer"]
    cfg = text_cfg(tmp_path, tokenizer=trained, vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        build_text_dataset(cfg, "val")


def test_pretokenize_script_builds_the_files_training_reads(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts/pretokenize.py"
    spec = importlib.util.spec_from_file_location("pretokenize", script)
    pretokenize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretokenize)
    args = [f"data.cache_dir={tmp_path}", "data.vocab_size=300", "data.max_docs=5", "data.tokenizer_train_docs=5"]
    pretokenize.main(args)
    built = sorted(p.name for p in tmp_path.rglob("*.bin"))
    assert built == ["train.bin", "val.bin"]
    pretokenize.main(args)
    assert capsys.readouterr().out.count("exists, skipped") == 2
    cfg = text_cfg(tmp_path, max_docs=5, tokenizer_train_docs=5)  # what training composes
    assert build_text_dataset(cfg, "train").path.parent == next(tmp_path.rglob("train.bin")).parent


def test_local_text_files_are_one_document_each(tmp_path):
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(f"line one of {i}\nline two\n")
    cfg = text_cfg(tmp_path / "cache", source=str(tmp_path / "*.txt"), val_fraction=0.0)
    assert list(iter_documents(cfg, "train")) == [f"line one of {i}\nline two\n" for i in range(3)]


def test_local_files_refuse_a_named_validation_split(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n")
    cfg = text_cfg(tmp_path / "cache", source=str(tmp_path / "a.txt"), val_split="validation")
    with pytest.raises(ValueError, match="val_split=null"):
        list(iter_documents(cfg, "val"))
