"""Audio clips as a dataset: decoding, the sample-rate check, the held-out split and ``AudioDataset``
(shared by the local corpus reader ``dyt.data.audio`` and the hub reader ``dyt.data.audio_hub``)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger("dyt.data.audio")  # the audio data's one logger

AUDIO_SUFFIXES = (".flac", ".wav")
RECEPTIVE_FIELD = 400  # samples one wav2vec 2.0 frame sees (models.wav2vec2_layers.receptive_field())


def _soundfile():
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - a requirement
        raise ImportError("reading audio needs the soundfile package: pip install soundfile") from e
    return soundfile


def check_sample_rate(path: str | Path, found: int, expected: int) -> None:
    if found != expected:
        raise ValueError(
            f"{path} is sampled at {found} Hz but data.sample_rate is {expected} Hz (wav2vec 2.0 expects "
            f"16 kHz); resample the corpus (e.g. scipy.signal.resample_poly) or set data.sample_rate"
        )


def _held_out(path: Path, valid_percent: float) -> bool:
    """Hash of the file name (unique in LibriSpeech), so the split does not depend on where the corpus lives."""
    return zlib.crc32(path.name.encode()) % 10_000 < valid_percent * 10_000


class AudioDataset(Dataset):
    """Utterances of one split. Item ``i``: ``(waveform float32 (samples,), crop key)``; the crop key is
    drawn from the torch RNG, which the trainer seeds per (seed, epoch, item), so random crops are exact
    on resume."""

    def __init__(
        self,
        files: Sequence[tuple[Path, int]],
        sample_rate: int,
        min_sample_size: int,
        max_sample_size: int,
        normalize: bool,
    ) -> None:
        min_sample_size = max(min_sample_size, RECEPTIVE_FIELD)
        self.files = [(p, n) for p, n in files if n >= min_sample_size]
        skipped = len(files) - len(self.files)
        if skipped:
            log.info("skipped %d of %d clips shorter than %d samples", skipped, len(files), min_sample_size)
        if not self.files:
            raise ValueError(
                f"every one of the {len(files)} clips is shorter than {min_sample_size} samples "
                f"(data.min_sample_size); lower it (never below the 400-sample receptive field) or use longer clips"
            )
        self.sample_rate, self.max_sample_size, self.normalize = sample_rate, max_sample_size, normalize
        self.sizes = np.array([min(n, max_sample_size) for _, n in self.files], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, index: int) -> tuple[np.ndarray, int, str | Path]:
        """(samples x channels float32, sample rate, what to name in errors) of utterance ``index``."""
        path, _ = self.files[index]
        try:
            wav, rate = _soundfile().read(str(path), dtype="float32", always_2d=True)
        except Exception as e:
            raise RuntimeError(f"cannot read audio file {path}: {e}; remove it from the corpus or manifest") from e
        return wav, rate, path

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        wav, rate, where = self._decode(index)
        check_sample_rate(where, rate, self.sample_rate)
        wav = torch.from_numpy(wav.mean(axis=1))  # fairseq averages multi-channel audio
        if self.normalize:
            wav = torch.nn.functional.layer_norm(wav, wav.shape)
        return wav, int(torch.randint(2**31 - 1, ()).item())
