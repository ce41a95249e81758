"""DNA sequence modelling (paper Table 6): pretraining on a reference genome, GenomicBenchmarks fine-tuning.

Two experiments per model, as upstream (hyena-dna, caduceus) and the paper ran them:

1. ``DNAPretrainTask``: windows of a reference genome (``dyt.data.dna.GenomeWindows``).
   ``task.objective=next_token`` (HyenaDNA): next-nucleotide cross-entropy, reverse-complement
   augmentation in the data. ``task.objective=mlm`` (Caduceus): BERT-style masked prediction of 15% of
   the bases (of those, 80% become [MASK], 10% a random base, 10% stay; caduceus ``mlm_getitem``).
   Metrics: ``val/loss`` (per predicted base) and ``val/acc`` on fixed validation windows (and masks).
2. ``GenomicBenchmarkTask``: one GenomicBenchmarks dataset per run, a linear classifier on the mean of
   the pretrained backbone's features (``init_from=`` the pretraining run; the model's
   ``init_from_state_dict`` drops the head). Metric: ``val/acc`` (%) on the benchmark's test split.
   Table 6 reports its average over the datasets: every dataset's run names the same ``paper_ref`` row,
   so the table's mean over that row's runs is that average (``paper_ref.part`` names the dataset).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import models
from dyt.data.dna import (
    BASE_IDS,
    MASK,
    PAD,
    build_classification_dataset,
    build_genome_windows,
    complement_ids,
    num_classes,
)
from dyt.engine.evaluation import sharded_sums
from dyt.engine.task import StepInfo, Task
from dyt.tasks.lm import next_token_loss

OBJECTIVES = ("next_token", "mlm")
IGNORE = -100  # targets of unmasked positions


def mask_tokens(
    tokens: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of the bases of ``tokens`` (B, L): (inputs, targets) with ``IGNORE`` where nothing
    is predicted. Draws from ``generator`` (the global RNG when None, which the trainer seeds per step)."""
    rand = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    action = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    acgt = torch.tensor([BASE_IDS[b] for b in "ACGT"], device=tokens.device)
    random_base = acgt[torch.randint(4, tokens.shape, generator=generator, device=tokens.device)]
    chosen = (rand < probability) & (tokens >= BASE_IDS["A"])
    inputs = torch.where(chosen & (action < 0.8), MASK, tokens)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_base, inputs)
    return inputs, torch.where(chosen, tokens, IGNORE)


class MaskedWindows(Dataset):
    """Validation windows with a fixed mask each: item ``i`` is (inputs, targets) masked with a
    generator seeded by ``(seed, i)``, so validation losses are comparable across evaluations."""

    def __init__(self, windows: Dataset, probability: float, seed: int) -> None:
        self.windows, self.probability, self.seed = windows, probability, seed

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        inputs, targets = mask_tokens(self.windows[i][None], self.probability, generator)
        return inputs[0], targets[0]


def _check_length(model: nn.Module, length: int, where: str) -> None:
    l_max = getattr(model, "l_max", None)
    if l_max is not None and length > l_max:
        raise ValueError(
            f"{where}={length} tokens is longer than the model allows (l_max={l_max}); lower it or pick a "
            f"preset with a longer context (e.g. hyenadna_tiny_16k, hyenadna_small_32k)"
        )


class DNAPretrainTask(Task):
    """Next-nucleotide (HyenaDNA) or masked-nucleotide (Caduceus) pretraining on a reference genome."""

    headline_metric = "val/loss"
    headline_mode = "min"
    throughput_unit = "tokens"

    @property
    def units_per_sample(self) -> float:
        return float(self.cfg.data.seq_len)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.objective = cfg.task.objective
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown task.objective {self.objective!r}; valid objectives are: {', '.join(OBJECTIVES)}"
            )
        self.extra_tokens = 1 if self.objective == "next_token" else 0  # the next-token target of the last input

    def build_model(self) -> nn.Module:
        model = models.create_model(self.cfg.model, norm=self.cfg.norm)
        if self.objective == "next_token" and not getattr(model, "causal", False):
            raise ValueError(
                f"task.objective=next_token needs a causal model, but {self.cfg.model.name} sees later tokens "
                f"(bidirectional or reverse-complement shared); use task.objective=mlm, as Caduceus does"
            )
        _check_length(model, int(self.cfg.data.seq_len), "data.seq_len")
        return model

    def train_data(self) -> Dataset:
        return build_genome_windows(self.cfg.data, "train", self.extra_tokens, int(self.cfg.seed))

    def eval_data(self) -> Dataset:
        windows = build_genome_windows(self.cfg.data, "val", self.extra_tokens, int(self.cfg.seed))
        if self.objective == "mlm":
            return MaskedWindows(windows, float(self.cfg.task.mlm_probability), int(self.cfg.seed))
        return windows

    def _logits_targets(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.objective == "next_token":
            return model(batch[:, :-1]), batch[:, 1:]
        inputs, targets = (
            batch if isinstance(batch, list | tuple) else mask_tokens(batch, self.cfg.task.mlm_probability)
        )
        return model(inputs), targets

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        if self.objective == "next_token":
            return next_token_loss(model, batch), {}
        logits, targets = self._logits_targets(model, batch)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE), {}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        def sums(batch: Any) -> torch.Tensor:
            logits, targets = self._logits_targets(model, batch)
            logits, targets = logits.float().flatten(0, 1), targets.flatten()
            scored = targets != IGNORE
            loss = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
            hits = (logits.argmax(-1) == targets)[scored].sum()
            return torch.stack([loss, hits.to(loss.dtype), scored.sum().to(loss.dtype)])

        loss, hits, n = sharded_sums(
            self.eval_data(), sums, batch_size=int(self.cfg.task.eval_batch_size), device=device
        ).tolist()
        return {"val/loss": loss / max(n, 1), "val/acc": 100.0 * hits / max(n, 1)}


class GenomicBenchmarkTask(Task):
    """Sequence classification on a pretrained DNA backbone (GenomicBenchmarks, or the janggu demo)."""

    headline_metric = "val/acc"
    headline_mode = "max"

    def build_model(self) -> nn.Module:
        model = models.create_model(self.cfg.model, norm=self.cfg.norm, num_classes=num_classes(self.cfg.data))
        _check_length(model, int(self.cfg.data.max_length), "data.max_length")
        return model

    def _data(self, split: str) -> Dataset:
        data = build_classification_dataset(self.cfg.data, split)
        if len(data.classes) != num_classes(self.cfg.data):
            raise ValueError(
                f"data.num_classes={num_classes(self.cfg.data)} but the {split} data has {len(data.classes)} "
                f"classes {data.classes}; set data.num_classes={len(data.classes)}"
            )
        return data

    def train_data(self) -> Dataset:
        return self._data("train")

    def eval_data(self) -> Dataset:
        return self._data("val")

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        tokens, labels = batch
        if self.cfg.task.rc_aug:
            # Reverse-complement half of the sequences (upstream dataset.rc_aug); padding stays on the right.
            flip = torch.rand(len(tokens), device=tokens.device) < 0.5
            tokens = torch.where(flip[:, None], _reverse_complement_padded(tokens), tokens)
        return F.cross_entropy(model(tokens).float(), labels), {}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        def sums(batch: Any) -> torch.Tensor:
            tokens, labels = batch
            logits = model(tokens).float()
            loss = F.cross_entropy(logits, labels, reduction="sum")
            hits = (logits.argmax(-1) == labels).sum().to(loss.dtype)
            return torch.stack([hits, loss, torch.tensor(float(len(labels)), device=loss.device)])

        hits, loss, n = sharded_sums(
            self.eval_data(), sums, batch_size=int(self.cfg.task.eval_batch_size), device=device
        ).tolist()
        return {"val/acc": 100.0 * hits / n, "val/loss": loss / n}


def _reverse_complement_padded(tokens: torch.Tensor) -> torch.Tensor:
    """Reverse complement of right-padded (B, L) tokens, padding kept on the right."""
    lengths = (tokens != PAD).sum(1, keepdim=True)
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    source = (lengths - 1 - positions).clamp(min=0)  # position t takes base lengths - 1 - t
    rc = complement_ids().to(tokens.device)[tokens.gather(1, source)]
    return torch.where(positions < lengths, rc, PAD)
