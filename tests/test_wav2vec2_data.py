"""Audio data for wav2vec 2.0: LibriSpeech layout and fairseq manifests, bad input refused or skipped
loudly, batches by total samples that are a pure function of (seed, epoch, rank) and resume exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf

from dyt.data.audio import AudioBatchSampler, AudioDataset, build_audio_dataset, collate, list_audio

RATE = 16_000


def _write(path: Path, seconds: float, rate: int = RATE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.01 * np.random.default_rng(seed).standard_normal(n)
    soundfile.write(path, wave.astype(np.float32), rate)
    return path


def _corpus(root: Path, n: int = 6) -> Path:
    for i in range(n):
        _write(root / "train" / "19" / "198" / f"19-198-{i:04d}.flac", 0.5 + 0.1 * i, seed=i)
    return root


def _cfg(root: Path | None, **kw):
    base = {
        "root": None if root is None else str(root),
        "train": ["train"],
        "val": None,
        "valid_percent": 0.0,
        "sample_rate": RATE,
        "min_sample_size": 400,
        "max_sample_size": 16000,
        "normalize": False,
    }
    return OmegaConf.create({**base, **kw})


def test_librispeech_directory_and_manifest_list_the_same_files(tmp_path):
    root = _corpus(tmp_path)
    files = list_audio(["train"], str(root), RATE)
    assert [p.name for p, _ in files] == [f"19-198-{i:04d}.flac" for i in range(6)]
    assert [n for _, n in files] == [int((0.5 + 0.1 * i) * RATE) for i in range(6)]
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{root}\n" + "".join(f"{p.relative_to(root)}\t{n}\n" for p, n in files))
    assert list_audio([str(manifest)], None, RATE) == files


def test_missing_directory_names_it_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*data.root"):
        list_audio(["nope"], str(tmp_path), RATE)
    with pytest.raises(ValueError, match="data.root is not set"):
        build_audio_dataset(_cfg(None), "train")


def test_corrupt_flac_is_skipped_and_logged(tmp_path, caplog):
    root = _corpus(tmp_path, n=3)
    bad = root / "train" / "19" / "198" / "19-198-0099.flac"
    bad.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with caplog.at_level(logging.WARNING, logger="dyt.data.audio"):
        files = list_audio(["train"], str(root), RATE)
    assert bad not in [p for p, _ in files] and len(files) == 3
    assert str(bad) in caplog.text


def test_corrupt_file_at_read_time_is_an_error_naming_it(tmp_path):
    path = _write(tmp_path / "a.flac", 1.0)
    data = AudioDataset([(path, RATE)], RATE, 400, RATE, normalize=False)
    path.write_bytes(b"not audio")
    with pytest.raises(RuntimeError, match="cannot read audio file .*a.flac"):
        data[0]


def test_wrong_sample_rate_is_an_error_with_the_fix(tmp_path):
    _write(tmp_path / "train" / "x.flac", 1.0, rate=8000)
    with pytest.raises(ValueError, match="8000 Hz but data.sample_rate is 16000.*resample"):
        list_audio(["train"], str(tmp_path), RATE)


def test_clips_shorter_than_the_receptive_field_are_skipped_and_counted(tmp_path, caplog):
    files = [(tmp_path / "short.flac", 399), (tmp_path / "ok.flac", 400)]
    with caplog.at_level(logging.INFO, logger="dyt.data.audio"):
        data = AudioDataset(files, RATE, min_sample_size=0, max_sample_size=RATE, normalize=False)
    assert [p.name for p, _ in data.files] == ["ok.flac"]
    assert "skipped 1 of 2 clips shorter than 400 samples" in caplog.text
    with pytest.raises(ValueError, match="shorter than 400 samples"):
        AudioDataset(files[:1], RATE, 0, RATE, normalize=False)


def test_held_out_validation_split_is_disjoint_and_stable(tmp_path):
    root = _corpus(tmp_path, n=6)
    cfg = _cfg(root, valid_percent=0.5)
    train, val = build_audio_dataset(cfg, "train"), build_audio_dataset(cfg, "val")
    names = lambda d: {p.name for p, _ in d.files}  # noqa: E731
    assert names(train).isdisjoint(names(val)) and len(names(train) | names(val)) == 6
    assert names(val) and names(train)


def test_items_normalise_per_utterance_and_collate_crops_to_the_shortest(tmp_path):
    path = _write(tmp_path / "a.flac", 1.0)
    item, _ = AudioDataset([(path, RATE)], RATE, 400, RATE, normalize=True)[0]
    assert abs(item.mean().item()) < 1e-5 and abs(item.std(unbiased=False).item() - 1) < 1e-3
    items = [(torch.arange(1000.0), 7), (torch.arange(800.0), 3)]
    batch = collate(items, max_sample_size=600)
    assert batch.shape == (2, 600)
    assert torch.equal(batch[0], torch.arange(7 % 401, 7 % 401 + 600.0))
    assert torch.equal(batch[1], torch.arange(3.0, 603.0))


def _all_batches(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_batches_hold_at_most_max_tokens_and_cover_every_clip():
    sizes = np.random.default_rng(0).integers(1000, 5000, size=200)
    sampler = AudioBatchSampler(sizes, max_tokens=20_000, seed=3)
    batches = _all_batches(sampler, 0)
    assert len(batches) == sampler.batches_per_epoch == len(sampler)
    assert all(len(b) * sizes[b].max() <= 20_000 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(200))


def test_sampler_is_a_pure_function_of_seed_epoch_rank_and_resumes_exactly():
    sizes = np.random.default_rng(1).integers(1000, 5000, size=300)
    make = lambda rank, seed=0: AudioBatchSampler(sizes, 16_000, rank=rank, world_size=2, seed=seed)  # noqa: E731
    a, b = _all_batches(make(0), 4), _all_batches(make(0), 4)
    assert a == b
    assert a != _all_batches(make(0), 5) and a != _all_batches(make(0, seed=1), 4)
    other = _all_batches(make(1), 4)
    assert len(a) == len(other) == make(0).batches_per_epoch
    assert {i for x in a for i in x}.isdisjoint({i for x in other for i in x})
    assert _all_batches(make(0), 4, start=5) == a[5:]
    epochs = {len(_all_batches(make(0), e)) for e in range(4)}
    assert epochs == {make(0).batches_per_epoch}


def test_a_clip_longer_than_the_batch_is_refused():
    with pytest.raises(ValueError, match="does not fit a batch of 1000 samples"):
        AudioBatchSampler([5000], max_tokens=1000)
