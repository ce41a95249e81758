"""A tiny task and config for the engine tests: an MLP with DyT on scikit-learn's digits.

Fault injection lives here, not in the engine: task options make ``after_optimizer_step`` kill the process
(SIGKILL) or send it a signal at a given step, and ``training_step`` return NaN at a given step.
"""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from dyt.engine.sampler import derive_seed
from dyt.engine.task import StepInfo, Task
from dyt.nn import DyT, build_norm_factory

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
N_TRAIN = 1024  # digits used for training; the other 773 are the validation set
# The environment of every subprocess the tests start: offline Hugging Face, one thread, unbuffered output.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten 8x8 digits, read from its data file without importing
    scikit-learn (which would add seconds to every subprocess of these tests)."""
    sklearn_dir = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    data = np.loadtxt(os.path.join(sklearn_dir, "datasets", "data", "digits.csv.gz"), delimiter=",")
    return torch.tensor(data[:, :-1], dtype=torch.float32) / 16.0, torch.tensor(data[:, -1], dtype=torch.long)


def make_cfg(run_dir: str | os.PathLike, overrides: list[str] | None = None) -> Any:
    """The engine's config files (trainer/default, optim/adamw, logger/jsonl) plus the tiny task,
    with dotlist ``overrides`` such as ``trainer.max_steps=10``."""
    cfg = OmegaConf.create(
        {
            "experiment_name": "engine_test",
            "seed": 0,
            "run_dir": str(run_dir),
            "model": {"name": "tiny_mlp", "width": 32, "depth": 2, "dropout": 0.0},
            "norm": {"name": "dyt"},
            "task": {
                "_target_": "tests.engine_helpers.DigitsTask",
                "noise": 0.0,
                "kill_at_step": None,
                "signal_at_step": None,
                "nan_at_step": None,
            },
            "trainer": OmegaConf.load(CONFIGS / "trainer/default.yaml"),
            "optim": OmegaConf.load(CONFIGS / "optim/adamw.yaml"),
            "logger": OmegaConf.load(CONFIGS / "logger/jsonl.yaml"),
        }
    )
    cfg.trainer.global_batch = 32
    cfg.trainer.progress = "off"
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides or []))


class Block(nn.Module):
    """Pre-norm residual MLP block with DyT (or the configured norm) as its norm."""

    def __init__(self, width: int, dropout: float, norm: Any = None) -> None:
        super().__init__()
        # impl="eager": the fused CPU kernel would torch.compile (seconds)
        self.norm = norm(width, site="block", impl="eager") if norm is not None else DyT(width, impl="eager")
        self.fc = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.nn.functional.gelu(self.fc(self.norm(x))))


class TinyNet(nn.Module):
    """64 pixels -> ``depth`` residual blocks -> 10 classes. Without ``reset_parameters`` it is built whole
    also under FSDP2, so FSDP2 and DDP runs start from the same weights and can be compared."""

    def __init__(self, width: int, depth: int, dropout: float, norm: Any = None) -> None:
        super().__init__()
        self.embed = nn.Linear(64, width)
        self.blocks = nn.ModuleList(Block(width, dropout, norm) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Digits(Dataset):
    """Digits scaled to [0, 1], with optional Gaussian pixel noise (item-level randomness)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float) -> None:
        self.x, self.y, self.noise = x, y, noise

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        return (x + self.noise * torch.randn_like(x) if self.noise else x), self.y[i]


class DigitsTask(Task):
    """Classification of 8x8 digits; reports ``val/loss`` and ``val/top1``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.x, self.y = load_digits()
        # Fault injection; the driver may also set these on the task (then the command stays the same).
        self.kill_at_step, self.signal_at_step = cfg.task.kill_at_step, cfg.task.signal_at_step

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        return TinyNet(m.width, m.depth, m.dropout, build_norm_factory(self.cfg.norm))

    def train_data(self) -> Dataset:
        return Digits(self.x[:N_TRAIN], self.y[:N_TRAIN], self.cfg.task.noise)

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if self.cfg.task.nan_at_step is not None and info.step + 1 >= self.cfg.task.nan_at_step:  # 1-based
            loss = loss * float("nan")
        return loss, {"acc": (logits.argmax(-1) == y).float().mean().item()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        x, y = self.x[N_TRAIN:].to(device), self.y[N_TRAIN:].to(device)
        logits = model(x).float()
        return {
            "val/loss": nn.functional.cross_entropy(logits, y).item(),
            "val/top1": 100.0 * (logits.argmax(-1) == y).float().mean().item(),
        }

    def after_optimizer_step(self, model: nn.Module, info: StepInfo) -> None:
        step = info.step + 1  # steps taken, like metrics.jsonl
        if self.kill_at_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.signal_at_step == step:
            os.kill(os.getpid(), signal.SIGTERM)


class ByLabelBatchSampler:
    """A task-supplied sampler (like audio batched by length): indices bucketed by label, each bucket
    shuffled from ``(seed, epoch)`` and cut into full batches, the batches shuffled and dealt to ranks."""

    def __init__(self, labels: torch.Tensor, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.labels, self.batch_size, self.rank, self.world, self.seed = labels, batch_size, rank, world_size, seed
        self.epoch = self.start = 0

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 99))
        batches = []
        for label in range(10):
            idx = torch.nonzero(self.labels == label).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)].tolist()
            batches += [idx[i : i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        usable = len(batches) - len(batches) % self.world
        return [batches[i] for i in order[:usable]][self.rank :: self.world]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches())

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __iter__(self):
        yield from self._batches()[self.start :]


class ToyDinoTask(DigitsTask):
    """A DINO-shaped task that uses every hook of the Task contract: a step-aware loss (a scheduled
    temperature), a center kept as task state and updated after each step with a scheduled momentum,
    the head's gradients cancelled before the optimizer step for the first steps (DINO's last-layer
    freeze), its own batch sampler, and (in the config) a weight-decay schedule."""

    FREEZE_STEPS = 3

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.center = torch.zeros(10)
        self._batch_center = torch.zeros(10)

    def batch_sampler(self, dataset, batch_size, rank, world_size, seed):
        return ByLabelBatchSampler(self.y[:N_TRAIN], batch_size, rank, world_size, seed)

    def schedules(self, total_steps, steps_per_epoch):
        from dyt.engine.schedule import build_scalar_schedule

        return {
            "temperature": build_scalar_schedule({"shape": "linear", "start": 1.0, "end": 0.5}, total_steps, 1),
            "momentum": build_scalar_schedule({"shape": "cosine", "start": 0.9, "end": 1.0}, total_steps, 1),
        }

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x) / info.scalars["temperature"]
        loss = nn.functional.cross_entropy(logits - self.center, y)
        self._batch_center = logits.detach().mean(0)
        return loss, {"center_norm": self.center.norm().item()}

    def before_optimizer_step(self, model: nn.Module, info: StepInfo) -> None:
        if info.step < self.FREEZE_STEPS:
            model.head.weight.grad = None

    def after_optimizer_step(self, model: nn.Module, info: StepInfo) -> None:
        m = info.scalars["momentum"]
        self.center = m * self.center + (1 - m) * self._batch_center
        super().after_optimizer_step(model, info)

    def state_dict(self) -> dict[str, Any]:
        return {"center": self.center.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.center = state["center"].clone()
