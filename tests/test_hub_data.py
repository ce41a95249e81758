"""Hub data sets read offline: LibriSpeech in openslr/librispeech_asr's parquet layout, GenomicBenchmarks
as katarinagresova/Genomic_Benchmarks_* publishes it, and a reference FASTA in a hub dataset repo. Each
test writes a tiny data set in the hub's layout and loads it the way the hub id loads (``datasets``
reads the directory's card and parquet files; ``huggingface_hub`` reads its cache)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dyt.data import dna
from dyt.data.audio import AudioBatchSampler, build_audio_dataset, collate
from dyt.data.audio_hub import HubAudioDataset
from dyt.engine import Trainer
from dyt.tasks.dna import DNAPretrainTask, GenomicBenchmarkTask

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# ---- LibriSpeech in the hub's layout ------------------------------------------------------------

LIBRISPEECH_FEATURES = datasets.Features(  # openslr/librispeech_asr's card, config "all"
    {
        "file": datasets.Value("string"),
        "audio": datasets.Audio(sampling_rate=16000),
        "text": datasets.Value("string"),
        "speaker_id": datasets.Value("int64"),
        "chapter_id": datasets.Value("int64"),
        "id": datasets.Value("string"),
    }
)


def _wave(samples: int, seed: int) -> np.ndarray:
    """Speech-like test audio: harmonic tones switching every 50 ms, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    f0 = np.repeat(rng.uniform(100, 300, size=samples // 800 + 1), 800)[:samples]
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3)) + 0.05 * rng.standard_normal(samples)
    return (0.2 * wave).astype(np.float32)


def _flac(samples: int, seed: int, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, _wave(samples, seed), rate, format="FLAC")
    return buf.getvalue()


def write_librispeech_hub(root: Path, splits: dict[str, list[tuple[str, bytes]]]) -> Path:
    """``root`` in the hub's layout: a card naming config ``all`` and its splits, and one parquet file
    ``all/<split>/0000.parquet`` per split whose schema carries the card's features."""
    card = ["---", "configs:", "- config_name: all", "  data_files:"]
    for split, rows in splits.items():
        card += [f"  - split: {split}", f"    path: all/{split}/*"]
        speaker = [int(i.split("-")[0]) for i, _ in rows]
        chapter = [int(i.split("-")[1]) for i, _ in rows]
        table = pa.Table.from_pydict(
            {
                "file": [f"/data/LibriSpeech/{split}/{i}.flac" for i, _ in rows],
                "audio": [{"bytes": b, "path": f"{i}.flac"} for i, b in rows],
                "text": ["A TRANSCRIPT"] * len(rows),
                "speaker_id": speaker,
                "chapter_id": chapter,
                "id": [i for i, _ in rows],
            },
            schema=LIBRISPEECH_FEATURES.arrow_schema,
        )
        (root / "all" / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "all" / split / "0000.parquet")
    (root / "README.md").write_text("\n".join([*card, "---", "# LibriSpeech (test copy)", ""]))
    return root


def _clips(n: int, speaker: int, seed: int) -> list[tuple[str, bytes]]:
    return [(f"{speaker}-2-{i:04d}", _flac(5000 + 300 * i, seed + i)) for i in range(n)]


def audio_cfg(hub: Path, tmp_path: Path, **overrides):
    cfg = OmegaConf.merge(
        OmegaConf.load(ROOT / "configs/data/librispeech.yaml"),
        OmegaConf.load(ROOT / "configs/data/librispeech_hub.yaml"),
    )
    cfg.pop("defaults")
    cfg.merge_with(
        {
            "hf_dataset": str(hub),
            "hf_cache_dir": str(tmp_path / "hf_cache"),
            "train": ["train.clean.100"],
            "val": ["validation.clean"],
            "min_sample_size": 4000,
            "max_sample_size": 6000,
            **overrides,
        }
    )
    return cfg


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("librispeech_asr")
    return write_librispeech_hub(root, {"train.clean.100": _clips(10, 1, 0), "validation.clean": _clips(3, 3, 100)})


def test_hub_copy_reads_exactly_like_the_same_clips_as_local_flac_files(hub, tmp_path):
    """Same lengths, same held-out utterances (hash of the file name), same items and batches."""
    clips = _clips(10, 1, 0) + _clips(40, 5, 500)
    local = tmp_path / "LibriSpeech"
    for i, b in clips:
        path = local / "train-clean-100" / i.split("-")[0] / "2" / f"{i}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b)
    hub_dir = write_librispeech_hub(tmp_path / "hub", {"train.clean.100": sorted(clips)})
    common = {"val": None, "valid_percent": 0.1}
    hub_cfg = audio_cfg(hub_dir, tmp_path, **common)
    local_cfg = OmegaConf.merge(hub_cfg, {"hf_dataset": None, "root": str(local), "train": ["train-clean-100"]})
    for split in ("train", "val"):
        ours, theirs = build_audio_dataset(hub_cfg, split), build_audio_dataset(local_cfg, split)
        assert isinstance(ours, HubAudioDataset) and 0 < len(ours) == len(theirs)
        assert np.array_equal(ours.sizes, theirs.sizes)
        for i in range(len(ours)):
            torch.manual_seed(i)
            a = ours[i]
            torch.manual_seed(i)
            b = theirs[i]
            assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert len(build_audio_dataset(hub_cfg, "val")) == 5  # 5 of 50 file names hash into the held-out 10%


def test_audio_batching_of_a_hub_copy_resumes_at_the_exact_batch(hub, tmp_path):
    data = build_audio_dataset(audio_cfg(hub, tmp_path), "train")
    assert list(data.sizes) == [5000, 5300, 5600, 5900] + [6000] * 6  # capped at max_sample_size

    def batches(start: int, epoch: int = 1) -> list[torch.Tensor]:
        sampler = AudioBatchSampler(data.sizes, 12000, seed=7)
        sampler.set_epoch(epoch, start_batch=start)
        out = []
        for b, indices in enumerate(sampler, start=start):
            torch.manual_seed(1000 * epoch + b)  # the trainer seeds per (seed, epoch, batch)
            out.append(collate([data[i] for i in indices], data.max_sample_size))
        return out

    full = batches(0)
    assert sum(len(b) for b in full) == len(data) and all(b.numel() <= 12000 for b in full)
    resumed = batches(2)
    assert len(resumed) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[2:], strict=True))


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_split_the_copy_lacks_is_refused_naming_its_splits(hub, tmp_path):
    with pytest.raises(ValueError) as e:
        build_audio_dataset(audio_cfg(hub, tmp_path, train=["train-clean-100"]), "train")
    assert "has no split 'train-clean-100'" in _one_line(e) and "validation.clean" in _one_line(e)
    with pytest.raises(FileNotFoundError) as e:
        build_audio_dataset(audio_cfg(tmp_path / "nowhere", tmp_path), "train")
    assert "data.hf_dataset=" in _one_line(e) and "a local directory in the hub's layout" in _one_line(e)


def test_a_missing_column_is_refused_naming_the_columns_and_the_setting(tmp_path):
    root = write_librispeech_hub(
        tmp_path / "hub", {"train.clean.100": _clips(3, 1, 0), "validation.clean": _clips(1, 3, 0)}
    )
    for split in ("train.clean.100", "validation.clean"):
        table = pq.read_table(root / "all" / split / "0000.parquet")
        pq.write_table(table.drop_columns(["id"]).replace_schema_metadata(None), root / "all" / split / "0000.parquet")
    with pytest.raises(ValueError) as e:
        build_audio_dataset(audio_cfg(root, tmp_path), "train")
    assert "lacks column(s) ['id']" in _one_line(e) and "data.id_key" in _one_line(e)


def test_undecodable_audio_is_skipped_and_logged_and_an_all_bad_split_is_refused(tmp_path, caplog):
    rows = _clips(4, 1, 0)
    rows[1] = (rows[1][0], b"not audio at all")
    root = write_librispeech_hub(tmp_path / "hub", {"train.clean.100": rows, "validation.clean": [rows[0]]})
    with caplog.at_level(logging.WARNING, logger="dyt.data.audio_hub"):
        data = build_audio_dataset(audio_cfg(root, tmp_path), "train")
    assert len(data) == 3 and "id 1-2-0001" in caplog.text and "skipped 1 undecodable" in caplog.text

    bad = write_librispeech_hub(tmp_path / "bad", {"train.clean.100": [(i, b"junk") for i, _ in rows]})
    with pytest.raises(ValueError) as e:
        build_audio_dataset(audio_cfg(bad, tmp_path, val=None), "train")
    assert "no row of" in _one_line(e) and "soundfile can decode" in _one_line(e) and "id 1-2-0000" in _one_line(e)


def test_a_clip_that_fails_to_decode_while_training_is_an_error_naming_its_row(tmp_path):
    rows = _clips(3, 1, 0)
    rows[2] = (rows[2][0], rows[2][1][:200])  # the header (and its length) survive, the frames do not
    root = write_librispeech_hub(tmp_path / "hub", {"train.clean.100": rows, "validation.clean": rows[:1]})
    data = build_audio_dataset(audio_cfg(root, tmp_path), "train")
    assert len(data) == 3
    with pytest.raises(RuntimeError) as e:
        data[2]
    assert "cannot decode the audio of" in _one_line(e) and "id 1-2-0002" in _one_line(e)


def test_a_wrong_sample_rate_is_refused_naming_the_row_and_the_fix(tmp_path):
    rows = _clips(2, 1, 0) + [("1-2-0009", _flac(6000, 9, rate=8000))]
    root = write_librispeech_hub(tmp_path / "hub", {"train.clean.100": rows, "validation.clean": rows[:1]})
    with pytest.raises(ValueError) as e:
        build_audio_dataset(audio_cfg(root, tmp_path), "train")
    assert "row 2 (id 1-2-0009) is sampled at 8000 Hz" in _one_line(e) and "resample" in _one_line(e)


def hub_w2v_overrides(hub: Path, tmp_path: Path, run: Path) -> list[str]:
    """tests/test_wav2vec2_train.py's tiny run, reading the hub copy instead of flac files."""
    from tests.test_wav2vec2_train import _overrides

    return [
        *_overrides(tmp_path, run),
        "data=librispeech_hub",
        f"data.hf_dataset={hub}",
        f"data.hf_cache_dir={tmp_path / 'hf_cache'}",
        "data.train=[train.clean.100]",
        "data.val=[validation.clean]",
    ]


def test_wav2vec2_trains_from_a_hub_layout_data_set(hub, tmp_path):
    from dyt.tasks import build_task
    from tests.test_wav2vec2_train import _compose, _rows

    cfg = _compose(
        *hub_w2v_overrides(hub, tmp_path, tmp_path / "run"), "trainer.max_steps=4", "trainer.eval_every_steps=2"
    )
    results = Trainer(cfg).fit(build_task(cfg))
    evals = [r for r in _rows(tmp_path / "run") if "val/loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and np.isfinite(results["val/loss"])


@pytest.mark.slow  # two tiny runs and a fresh interpreter: ~40 s on 2 loaded cores
def test_kill_9_on_a_hub_copy_then_the_same_command_is_bit_identical(hub, tmp_path):
    """The batches by total samples resume at the sampler's exact position from the hub copy too."""
    from dyt.tasks import build_task
    from tests.test_wav2vec2_train import _compose, check_kill_9_then_resume

    def overrides(run: Path) -> list[str]:
        return hub_w2v_overrides(hub, tmp_path, run)

    cfg = _compose(*overrides(tmp_path / "reference"))
    Trainer(cfg).fit(build_task(cfg))
    check_kill_9_then_resume(overrides, tmp_path / "reference", tmp_path / "run")


# ---- GenomicBenchmarks as published on the hub ----------------------------------------------------


def write_genomic_benchmark_hub(root: Path, splits: dict[str, tuple[list[str], list[int]]]) -> Path:
    """katarinagresova/Genomic_Benchmarks_*'s layout: data/<split>-00000-of-00001.parquet with seq, label."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, (seqs, labels) in splits.items():
        table = pa.Table.from_pydict(
            {"seq": seqs, "label": labels}, schema=pa.schema([("seq", pa.string()), ("label", pa.int64())])
        )
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def _toy_benchmark(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for label, alphabet in enumerate(("AATTACGT", "GGCCACGT")):
        for _ in range(n):
            seqs.append("".join(rng.choice(list(alphabet), int(rng.integers(20, 40)))))
            labels.append(label)
    return seqs, labels


def gb_cfg(tmp_path: Path, hub_dir: Path, *overrides: str):
    from tests.test_dna_tasks import classification_cfg

    return classification_cfg(
        tmp_path,
        "data=genomic_benchmarks_hub",
        f"data.hf_dataset={hub_dir}",
        f"data.hf_cache_dir={tmp_path / 'hf_cache'}",
        *overrides,
    )


def test_the_hub_config_names_the_authors_repo_per_dataset(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("train", overrides=["experiment=paper/hyenadna_gb", "data=genomic_benchmarks_hub"])
    assert cfg.data.hf_dataset == "katarinagresova/Genomic_Benchmarks_human_nontata_promoters"
    assert (cfg.data.seq_key, cfg.data.label_key, dna.num_classes(cfg.data)) == ("seq", "label", 2)


def test_genomic_benchmarks_trains_from_the_hub_layout(tmp_path):
    hub_dir = write_genomic_benchmark_hub(
        tmp_path / "gb", {"train": _toy_benchmark(24, 0), "test": _toy_benchmark(8, 1)}
    )
    cfg = gb_cfg(tmp_path, hub_dir)
    train = dna.build_classification_dataset(cfg.data, "train")
    seqs, labels = _toy_benchmark(24, 0)
    assert len(train) == 48 and train.classes == ["0", "1"] and train.labels.tolist() == labels
    assert dna.decode(train.tokens[5].long()) == seqs[5]
    results = Trainer(cfg).fit(GenomicBenchmarkTask(cfg))
    assert results["headline_metric"] == "val/acc" and results["val/acc"] >= 75.0  # AT- vs GC-rich: easy


@pytest.mark.parametrize(
    "splits, overrides, message",
    [
        ({"train": _toy_benchmark(2, 0)}, (), "has no split 'test'"),
        (
            {"train": _toy_benchmark(2, 0), "test": _toy_benchmark(2, 1)},
            ("data.seq_key=sequence",),
            "lacks column(s) ['sequence']",
        ),
        ({"train": (["ACGT", "ACXT"], [0, 1]), "test": (["ACGT", "ACGT"], [0, 1])}, (), "row 1: unknown base 'X'"),
        ({"train": (["ACGT", "ACGT"], [1, 2]), "test": (["ACGT", "ACGT"], [0, 1])}, (), "labels are [1, 2]"),
        ({"train": (["ACGT", "ACGT"], [0, 0]), "test": (["ACGT", "ACGT"], [0, 1])}, (), "at least two classes"),
    ],
    ids=["no_test_split", "missing_column", "bad_base", "labels_not_from_0", "one_class"],
)
def test_bad_hub_benchmarks_are_refused_in_one_line(tmp_path, splits, overrides, message):
    hub_dir = write_genomic_benchmark_hub(tmp_path / "gb", splits)
    cfg = gb_cfg(tmp_path, hub_dir, *overrides)
    with pytest.raises(ValueError) as e:
        for split in ("train", "val"):
            dna.build_classification_dataset(cfg.data, split)
    assert message in _one_line(e)


# ---- a reference genome in a hub dataset repo ------------------------------------------------------


def _hub_cache_with(tmp_path: Path, monkeypatch, repo: str, filename: str, text: str) -> Path:
    """A hub cache holding one file of dataset repo ``repo`` at ``main`` (huggingface_hub's own layout:
    datasets--<owner>--<name>/{refs/main, snapshots/<commit>/<file>}), read offline."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"datasets--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    path = base / "snapshots" / commit / filename
    path.parent.mkdir(parents=True)
    path.write_text(text)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return path


def test_dna_pretraining_reads_a_fasta_from_a_hub_dataset_repo(tmp_path, monkeypatch):
    from tests.test_dna_tasks import pretrain_cfg

    url = "hf://datasets/someone/genomes/hg/genome.fa"
    cfg = pretrain_cfg(tmp_path, "data=dna_fasta_hub", f"data.fasta={url}", "trainer.max_steps=4")
    local = tmp_path / "genome.fa"  # what pretrain_cfg wrote, now also the hub repo's file
    cached = _hub_cache_with(tmp_path, monkeypatch, "someone/genomes", "hg/genome.fa", local.read_text())
    assert dna.fasta_paths(url) == [cached] and dna.fasta_paths([url, str(local)]) == [cached, local]
    genome = dna.load_genome(cfg.data)
    assert genome.names == [f"r{i}" for i in range(12)]
    assert np.array_equal(np.asarray(genome.ids), np.concatenate([ids for _, ids in dna.read_fasta(local)]))
    results = Trainer(cfg).fit(DNAPretrainTask(cfg))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "train/loss" in r]) == 4 and np.isfinite(results["val/loss"])


@pytest.mark.parametrize(
    "url, error, message",
    [
        ("hf://datasets/someone/genomes/missing.fa", FileNotFoundError, "cannot fetch data.fasta="),
        ("hf://datasets/someone", ValueError, "is not a hub file path; write hf://datasets/<owner>/<repo>/"),
    ],
)
def test_a_bad_hub_fasta_path_is_refused_in_one_line(tmp_path, monkeypatch, url, error, message):
    _hub_cache_with(tmp_path, monkeypatch, "someone/genomes", "genome.fa", ">r\nACGT\n")
    with pytest.raises(error) as e:
        dna.fasta_paths(url)
    assert message in _one_line(e)
