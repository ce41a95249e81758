"""Speech for wav2vec 2.0 from a Hugging Face ``datasets`` copy of LibriSpeech (``data.hf_dataset``).

The layout read is the hub's ``openslr/librispeech_asr`` (parquet since its conversion; dataset card:
https://huggingface.co/datasets/openslr/librispeech_asr/blob/549a9ef246208e830c7864251c447aa8c67453a3/README.md):
configs ``all`` / ``clean`` / ``other``; the ``all`` config's splits are ``train.clean.100``,
``train.clean.360``, ``train.other.500``, ``validation.clean``, ``validation.other``, ``test.clean``,
``test.other``; columns ``file`` (the original file name), ``audio`` ({bytes, path}: the flac bytes),
``text``, ``speaker_id``, ``chapter_id``, ``id``. ``data.hf_dataset`` is a hub id or a local directory
that ``datasets.load_dataset`` reads the same way (its parquet files and card); ``data.train`` /
``data.val`` name splits of ``data.hf_config``.

Audio is decoded with ``soundfile`` from the stored bytes (the column is read with ``decode=False``, so
``datasets``' own decoder is never used). Everything after decoding is the local reader's
(dyt/data/audio.py): the same clip filter, sample-rate check, crop keys, ``normalize``, and the same
``AudioBatchSampler`` over the clip lengths, so batches by total samples resume exactly. ``data.val:
null`` holds out ``valid_percent`` of the training rows by the local reader's hash of the file name, so a
hub copy and a local copy of LibriSpeech hold out the same utterances.

Each clip's length is read once from its header (``soundfile.info``) in a ``datasets.map`` pass, which
``datasets`` caches next to the data set: later runs read the lengths from the cache. Rows whose audio
cannot be decoded are skipped there and logged with their ``id`` (as the local reader skips unreadable
files); one that fails while training is an error naming it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from dyt.data.audio_clips import AudioDataset, _held_out, _soundfile, check_sample_rate
from dyt.data.hub import load_split, one_line

log = logging.getLogger(__name__)


def _source(item: dict) -> Any:
    """What soundfile reads for one ``Audio(decode=False)`` cell: its bytes, else its file path."""
    if item is None or (item.get("bytes") is None and not item.get("path")):
        raise ValueError("the audio cell is empty")
    return io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]


def _probe(cells: list[dict]) -> dict[str, list[int]]:
    """Length in samples and sample rate of every clip of a batch, read from its header; -1 if undecodable."""
    sf, frames, rates = _soundfile(), [], []
    for cell in cells:
        try:
            info = sf.info(_source(cell))
            frames.append(int(info.frames))
            rates.append(int(info.samplerate))
        except Exception:  # soundfile raises its own LibsndfileError / RuntimeError types
            frames.append(-1)
            rates.append(-1)
    return {"num_samples": frames, "sample_rate": rates}


def load_audio_split(cfg: Any, name: str):
    """Split ``name`` of ``data.hf_dataset`` with its audio column undecoded; bad names and missing
    columns are refused in one line."""
    import datasets

    path = str(cfg.hf_dataset)
    ds = load_split(
        path,
        cfg.get("hf_config"),
        name,
        cfg.get("hf_cache_dir"),
        "set data.train / data.val to its splits (LibriSpeech 'all': train.clean.100, train.clean.360, "
        "train.other.500, validation.clean, ...)",
    )
    keys = {"data.audio_key": cfg.audio_key, "data.file_key": cfg.file_key, "data.id_key": cfg.id_key}
    missing = {k: v for k, v in keys.items() if v not in ds.column_names}
    if missing:
        raise ValueError(
            f"data.hf_dataset={path!r} split {name!r} lacks column(s) {sorted(missing.values())}; its columns "
            f"are {ds.column_names} (set {', '.join(missing)}; the librispeech_asr layout has file, audio, id)"
        )
    return ds.select_columns([cfg.audio_key, cfg.file_key, cfg.id_key]).cast_column(
        cfg.audio_key, datasets.Audio(decode=False)
    )


def probe_lengths(ds, audio_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(samples, sample rate) per row, -1 for undecodable rows; computed by rank 0 into ``datasets``'
    cache while other ranks wait, then read from it."""

    def run():
        return ds.map(
            _probe,
            input_columns=[audio_key],
            batched=True,
            batch_size=64,
            remove_columns=ds.column_names,
            desc="reading clip lengths",
        )

    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        probed = run()
    else:
        probed = run()
        if dist.is_initialized():
            dist.barrier()
    return np.asarray(probed["num_samples"], dtype=np.int64), np.asarray(probed["sample_rate"], dtype=np.int64)


class HubAudioDataset(AudioDataset):
    """Utterances of one or more splits of a ``datasets`` copy; ``files`` holds (row, samples), and
    items are what ``AudioDataset`` makes of them."""

    def __init__(self, parts: list[tuple[str, Any]], rows: list[tuple[int, int, int]], cfg: Any) -> None:
        self.parts, self.audio_key, self.id_key = parts, cfg.audio_key, cfg.id_key
        self._rows = rows  # (part, row in part, samples) of every kept clip, in order
        super().__init__(
            [(i, n) for i, (_, _, n) in enumerate(rows)],
            cfg.sample_rate,
            cfg.min_sample_size,
            cfg.max_sample_size,
            cfg.normalize,
        )

    def where(self, part: int, row: int) -> str:
        name, ds = self.parts[part]
        return f"{name} row {row} (id {ds[row][self.id_key]})"

    def _decode(self, index: int) -> tuple[np.ndarray, int, str]:
        part, row, _ = self._rows[self.files[index][0]]
        try:
            cell = self.parts[part][1][row][self.audio_key]
            wav, rate = _soundfile().read(_source(cell), dtype="float32", always_2d=True)
        except Exception as e:
            raise RuntimeError(
                f"cannot decode the audio of {self.where(part, row)}: {one_line(e)}; drop the row from the data set"
            ) from e
        return wav, rate, self.where(part, row)


def build_hub_audio_dataset(cfg: Any, split: str) -> HubAudioDataset:
    """The ``train`` or ``val`` utterances of ``data.hf_dataset`` (see the module docstring)."""
    names = cfg.train if split == "train" or cfg.get("val") is None else cfg.val
    if isinstance(names, str):
        names = [names]
    parts, rows, skipped = [], [], []
    for name in names:
        ds = load_audio_split(cfg, name)
        where = f"{cfg.hf_dataset} {name}"
        frames, rates = probe_lengths(ds, cfg.audio_key)
        bad = np.flatnonzero(frames < 0)
        for row in bad[:5].tolist():
            log.warning("skipping undecodable audio in %s row %d (id %s)", where, row, ds[row][cfg.id_key])
        skipped.append(len(bad))
        if len(bad) == len(ds):
            first = ds[0][cfg.audio_key] if len(ds) else None
            reason = "the split is empty"
            if first is not None:
                try:
                    _soundfile().info(_source(first))
                except Exception as e:
                    reason = f"row 0 (id {ds[0][cfg.id_key]}): {one_line(e)}"
            raise ValueError(
                f"no row of {where} holds audio that soundfile can decode ({reason}); the audio column must "
                f"hold flac/wav bytes, as openslr/librispeech_asr does"
            )
        wrong = np.flatnonzero((frames >= 0) & (rates != cfg.sample_rate))
        if len(wrong):
            row = int(wrong[0])
            check_sample_rate(f"{where} row {row} (id {ds[row][cfg.id_key]})", int(rates[row]), cfg.sample_rate)
        if cfg.get("val") is None:
            files = ds[cfg.file_key]
            keep = [
                r
                for r in np.flatnonzero(frames >= 0).tolist()
                if _held_out(Path(files[r]), cfg.valid_percent) == (split == "val")
            ]
        else:
            keep = np.flatnonzero(frames >= 0).tolist()
        rows += [(len(parts), r, int(frames[r])) for r in keep]
        parts.append((where, ds))
    if sum(skipped):
        log.warning("skipped %d undecodable clip(s) in %s", sum(skipped), ", ".join(w for w, _ in parts))
    if not rows:
        raise ValueError(
            f"the {split} split of {cfg.hf_dataset} {list(names)} is empty (data.valid_percent="
            f"{cfg.valid_percent} of the training rows are held out); raise it or name data.val splits"
        )
    return HubAudioDataset(parts, rows, cfg)
