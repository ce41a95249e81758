"""Deterministic, resumable data order, the global batch, and seeding (the trainer's half of the
determinism contract in ``dyt/engine/task.py``).

- :func:`plan_batch`: the recipe's global batch -> per-device micro-batch and gradient accumulation.
- :class:`ResumableBatchSampler`: what any batch sampler (the default one, or a task's own) provides.
- :class:`ShardedBatchSampler`: one global permutation per ``(seed, epoch)``, sharded by rank, full
  batches only, startable at any batch so a resumed run skips exactly the consumed batches.
- :class:`SeededDataset`: seeds every RNG from ``(seed, epoch, index)`` before each item, so
  augmentations do not depend on ``num_workers`` or on which worker loads an item.
- :func:`seed_all`: seeds torch / numpy / python from a tuple of integers (the trainer uses
  ``(seed, step, micro_batch, rank)`` before every training step).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every key (distinct tuples give unrelated streams)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# numpy's SeedSequence hash (numpy/random/bit_generator.pyx: hashmix, mix, mix_entropy, generate_state)
_MIX = {"init_a": 0x43B0D7E5, "mult_a": 0x931E8875, "init_b": 0x8B51F9DD, "mult_b": 0x58F38DED}
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4


def derive_seeds(*keys: int, last: np.ndarray) -> np.ndarray:
    """``[derive_seed(*keys, i) for i in last]`` in one vectorised pass (uint32): the same hash as
    numpy's ``SeedSequence(keys + (i,)).generate_state(1)``, ~100x cheaper per seed for a block."""
    last = np.asarray(last, dtype=np.int64)
    if any(not 0 <= int(k) < 2**32 for k in keys) or last.size and not 0 <= last.min() <= last.max() < 2**32:
        return np.array([derive_seed(*keys, int(i)) for i in last], dtype=np.uint32)  # multi-word keys
    words = [np.full(last.shape, int(k), dtype=np.uint32) for k in keys] + [last.astype(np.uint32)]
    const = _MIX["init_a"]

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal const
        value = value ^ np.uint32(const)
        const = const * _MIX["mult_a"] & 0xFFFFFFFF
        value = value * np.uint32(const)
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return r ^ (r >> np.uint32(16))

    zero = np.zeros(last.shape, dtype=np.uint32)
    pool = [hashmix(words[i] if i < len(words) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(words)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(words[src]))
    out = (pool[0] ^ np.uint32(_MIX["init_b"])) * np.uint32(_MIX["init_b"] * _MIX["mult_b"] & 0xFFFFFFFF)
    return out ^ (out >> np.uint32(16))


def seed_rngs(seed: int, cuda: bool = True) -> None:
    """Seed torch (CPU, and CUDA unless ``cuda=False``), numpy's global RNG and python's ``random``
    with ``seed``. ``cuda=False`` is ~40x cheaper (torch.manual_seed visits every device type)."""
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def seed_all(*keys: int, cuda: bool = True) -> None:
    """:func:`seed_rngs` with the seed derived from ``keys``."""
    seed_rngs(derive_seed(*keys), cuda)


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's ``global_batch`` samples are spread: ``world_size`` devices each run
    ``grad_accum`` micro-batches of ``micro_batch`` samples."""

    global_batch: int
    micro_batch: int
    grad_accum: int
    world_size: int


def plan_batch(global_batch: int, micro_batch: int | None, world_size: int) -> BatchPlan:
    """Split the recipe's ``global_batch`` over ``world_size`` devices with micro-batches of at most
    ``micro_batch`` samples (None: no limit), or refuse with the fix when it cannot be reached exactly."""
    for key, value in (("trainer.global_batch", global_batch), ("trainer.micro_batch", micro_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key}={value!r} is not allowed: it must be a positive whole number")
    if global_batch % world_size:
        raise ValueError(
            f"trainer.global_batch={global_batch} does not split over {world_size} processes; run on a number of "
            f"processes that divides it, or change trainer.global_batch (this changes the recipe)"
        )
    per_device = global_batch // world_size
    limit = min(micro_batch or per_device, per_device)
    accum = -(-per_device // limit)
    while per_device % accum:  # the smallest accumulation whose micro-batches are equal and fit
        accum += 1
    return BatchPlan(global_batch, per_device // accum, accum, world_size)


@runtime_checkable
class ResumableBatchSampler(Protocol):
    """A batch sampler the trainer can resume exactly: lists of dataset indices, a pure function of
    ``(seed, epoch, rank)``, the same number of batches on every rank."""

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank yields in a whole epoch (identical on every rank)."""
        ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start_batch`` (0 = from the start)."""
        ...

    def __iter__(self) -> Iterator[list[int]]: ...


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of indices for one rank.

    Each epoch draws one permutation of ``range(num_samples)`` from ``(seed, epoch)``; rank ``r`` of
    ``w`` takes every ``w``-th index starting at ``r``. Only full batches are yielded (drop_last), and
    every rank yields the same number of batches. ``set_epoch(epoch, start_batch)`` chooses the epoch
    and the first batch to yield.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {num_samples} samples, fewer than one global batch "
                f"({batch_size} per rank x {world_size} ranks); lower trainer.global_batch"
            )

    @property
    def batches_per_epoch(self) -> int:
        """Full batches each rank yields per epoch."""
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start_batch`` (0 = from the start)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        shard = torch.randperm(self.num_samples, generator=g)[self.rank :: self.world_size].tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            yield shard[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


class SeededDataset(Dataset):
    """Wraps a map-style dataset; item ``i`` of epoch ``e`` is produced with all RNGs seeded from
    ``(seed, e, i)``. ``set_epoch`` is forwarded to the wrapped dataset when it has one. The seeds are
    derived a block of :data:`SEED_BLOCK` indices at a time (:func:`derive_seeds`), not one per item.

    A wrapped dataset whose items draw no random numbers (no augmentation: item ``i`` is a pure function
    of ``i``) may say so with a class attribute ``draws_random = False``; a batch of its items
    (:meth:`__getitems__`, what ``DataLoader`` asks for) is then read without seeding, and the RNGs are
    seeded once, from the batch's last index, leaving them exactly as the per-item path leaves them for
    what runs next (the collate function). Seeding costs ~10 us per item, ~1% of a small CPU step."""

    SEED_BLOCK = 1024

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self._seeds: dict[int, np.ndarray] = {}  # block -> its items' seeds, this epoch

    def set_epoch(self, epoch: int) -> None:
        """Set before creating the epoch's DataLoader iterator (workers copy this object then)."""
        self.epoch, self._seeds = epoch, {}
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self._seed(index)
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """The items of one batch; one seeding in all when the wrapped dataset sets ``draws_random = False``."""
        if getattr(self.dataset, "draws_random", True):
            return [self[i] for i in indices]
        items = [self.dataset[i] for i in indices]
        if items:
            self._seed(indices[-1])
        return items

    def _seed(self, index: int) -> None:
        block, offset = divmod(index, self.SEED_BLOCK)
        seeds = self._seeds.get(block)
        if seeds is None:
            first = block * self.SEED_BLOCK
            seeds = self._seeds[block] = derive_seeds(
                self.seed, self.epoch, last=np.arange(first, first + self.SEED_BLOCK)
            )
        seed_rngs(int(seeds[offset]), cuda=False)  # items are produced on CPU
