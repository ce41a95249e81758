"""Speech for wav2vec 2.0 pretraining: LibriSpeech-style flac directories or fairseq tsv manifests, read with
``soundfile``, batched by total samples like fairseq's ``max_tokens``.

Sources (``data.train`` / ``data.val``, each a list; entries relative to ``data.root`` unless absolute):
- a directory, searched recursively for ``*.flac`` / ``*.wav`` (LibriSpeech's ``train-clean-100/<speaker>/
  <chapter>/*.flac`` layout, or any other), each file's length read from its header;
- a fairseq manifest ``*.tsv`` (``wav2vec_manifest.py``): the first line is the audio root, every other
  line ``<relative path>\\t<number of samples>``.
``data.val: null`` holds out ``valid_percent`` of the training files by a stable hash of their path, as
fairseq's ``wav2vec_manifest.py --valid-percent`` does (its README suggests 0.01); the hash is of the
file name, so the split does not depend on where the corpus is mounted.

What is refused or skipped, never silently mixed in:
- a missing root, directory or manifest, or a source with no audio: an error naming it;
- an unreadable (corrupt) file found while scanning a directory: skipped and logged with its path; one
  that fails while training: an error naming it;
- a sample rate other than ``data.sample_rate``: an error naming the file and the fix (resample);
- clips shorter than ``data.min_sample_size`` (fairseq's filter; never below the feature encoder's 400-sample
  receptive field): skipped, the count logged.

Training items are whole utterances; ``AudioBatchSampler`` groups them into batches of at most
``batch_size`` samples (every clip counted at its length capped at ``max_sample_size``), and ``collate``
crops every clip of a batch at random to the shortest one (and to ``max_sample_size``), as fairseq's
``RawAudioDataset`` does without padding. ``normalize`` standardises each utterance to zero mean and unit
variance (fairseq ``normalize: true``; the paper's recipes, Base and Large, leave it off).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dyt.data.audio_clips import (  # noqa: F401  (AUDIO_SUFFIXES, RECEPTIVE_FIELD: part of this API)
    AUDIO_SUFFIXES,
    RECEPTIVE_FIELD,
    AudioDataset,
    _held_out,
    _soundfile,
    check_sample_rate,
)
from dyt.engine.sampler import derive_seed

log = logging.getLogger(__name__)


def _resolve(root: str | os.PathLike | None, entry: str) -> Path:
    path = Path(os.path.expanduser(entry))
    return path if path.is_absolute() or root is None else Path(os.path.expanduser(str(root))) / path


def read_manifest(path: Path) -> list[tuple[Path, int]]:
    """(file, number of samples) of a fairseq tsv manifest."""
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"manifest {path} is empty; its first line must be the audio root directory")
    root, files = Path(lines[0].strip()), []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip().isdigit():
            raise ValueError(f"{path}:{n}: expected '<relative path>\\t<number of samples>', got {line!r}")
        files.append((root / parts[0], int(parts[1])))
    return files


def scan_directory(directory: Path, sample_rate: int) -> list[tuple[Path, int]]:
    """(file, number of samples) of every audio file under ``directory``, sorted; unreadable files are
    skipped and logged, a wrong sample rate is an error."""
    sf, files, bad = _soundfile(), [], []
    for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            info = sf.info(str(path))
        except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError types
            bad.append((path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
            log.warning("skipping unreadable audio file %s (%s)", path, bad[-1][1])
            continue
        check_sample_rate(path, info.samplerate, sample_rate)
        files.append((path, int(info.frames)))
    if bad and not files:  # the warnings above are the reason: they belong in the error
        raise ValueError(
            f"none of the {len(bad)} audio file(s) under {directory} is readable (first: {bad[0][0]}: "
            f"{bad[0][1]}); re-create or re-download them (soundfile reads .flac and PCM .wav)"
        )
    if bad:
        log.warning("skipped %d unreadable audio file(s) under %s", len(bad), directory)
    return files


def list_audio(sources: Sequence[str], root: str | None, sample_rate: int) -> list[tuple[Path, int]]:
    """Every (file, number of samples) of ``sources`` (directories and tsv manifests), in order."""
    files = []
    for entry in sources:
        path = _resolve(root, entry)
        if not path.exists():
            raise FileNotFoundError(
                f"audio source {path} does not exist; set data.root to the directory holding LibriSpeech "
                f"(or the demo corpus of scripts/data/make_speech_corpus.py) and data.train / data.val to "
                f"its subsets or fairseq .tsv manifests"
            )
        found = read_manifest(path) if path.suffix == ".tsv" else scan_directory(path, sample_rate)
        if not found:
            raise ValueError(f"no {' or '.join(AUDIO_SUFFIXES)} files in {path}")
        files += found
    return files


def collate(items: Sequence[tuple[torch.Tensor, int]], max_sample_size: int) -> torch.Tensor:
    """Crop every clip to the batch's shortest (at most ``max_sample_size``) at an offset chosen by its
    crop key, and stack: (B, samples)."""
    target = min(min(len(w) for w, _ in items), max_sample_size)
    return torch.stack([w[key % (len(w) - target + 1) :][:target] for w, key in items])


class AudioBatchSampler:
    """Batches of at most ``max_tokens`` samples (fairseq ``batch_by_size``): each epoch the utterances
    are shuffled by ``(seed, epoch)``, sorted by capped length (longest first; ties keep the shuffle),
    packed greedily so that ``len(batch) * longest <= max_tokens``, and the batches shuffled again; rank
    ``r`` of ``w`` takes batches ``r, r + w, ...``, and every rank yields ``batches_per_epoch``. A pure
    function of ``(seed, epoch, rank)``, startable at any batch (the ``ResumableBatchSampler`` protocol)."""

    def __init__(self, sizes: Sequence[int], max_tokens: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if len(self.sizes) == 0:
            raise ValueError("no utterances to batch")
        if self.sizes.max() > max_tokens:
            raise ValueError(
                f"a clip of {self.sizes.max()} samples does not fit a batch of {max_tokens} samples; raise the "
                f"per-device batch (trainer.global_batch / micro_batch, in samples) or lower data.max_sample_size"
            )
        self.max_tokens, self.rank, self.world_size, self.seed = max_tokens, rank, world_size, seed
        self.epoch, self.start_batch = 0, 0
        self._cached: tuple[int, list[list[int]]] | None = None
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.sizes)} utterances make fewer batches than the {world_size} ranks; "
                f"lower the per-device batch or use more data"
            )

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng(derive_seed(self.seed, epoch))
            order = rng.permutation(len(self.sizes))
            order = order[np.argsort(-self.sizes[order], kind="stable")]
            batches, current = [], []
            for i in order.tolist():
                # sorted longest first, so the batch's first clip is its longest
                if current and (len(current) + 1) * self.sizes[current[0]] > self.max_tokens:
                    batches.append(current)
                    current = []
                current.append(i)
            batches.append(current)
            self._cached = (epoch, [batches[j] for j in rng.permutation(len(batches))])
        return self._cached[1]

    @property
    def batches_per_epoch(self) -> int:
        """The same on every rank and in every epoch (the shuffle only reorders clips of equal length,
        so the packing's lengths, and its number of batches, never change); the last ``len % world``
        batches of an epoch are left out so that every rank steps together."""
        return len(self._batches(self.epoch)) // self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        for b in range(self.start_batch, self.batches_per_epoch):
            yield batches[b * self.world_size + self.rank]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def build_audio_dataset(cfg, split: str) -> AudioDataset:
    """The ``train`` or ``val`` split of ``configs/data`` audio settings (see the module docstring)."""
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; valid splits are: train, val")
    if cfg.get("hf_dataset"):  # a Hugging Face datasets copy (configs/data/librispeech_hub.yaml)
        from dyt.data.audio_hub import build_hub_audio_dataset

        return build_hub_audio_dataset(cfg, split)
    if cfg.get("root") is None and any(not Path(str(e)).is_absolute() for e in cfg.train):
        raise ValueError(
            "data.root is not set; point it at the corpus directory, e.g. data.root=/data/LibriSpeech "
            "(or build the offline demo corpus: python scripts/data/make_speech_corpus.py --out DIR)"
        )
    sources = cfg.get(split)
    if split == "val" and sources is None:
        files = [f for f in list_audio(cfg.train, cfg.root, cfg.sample_rate) if _held_out(f[0], cfg.valid_percent)]
    else:
        files = list_audio(sources, cfg.root, cfg.sample_rate)
        if split == "train" and cfg.get("val") is None:
            files = [f for f in files if not _held_out(f[0], cfg.valid_percent)]
    return AudioDataset(files, cfg.sample_rate, cfg.min_sample_size, cfg.max_sample_size, cfg.normalize)
