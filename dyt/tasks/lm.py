"""Causal language modelling (paper Table 4: LLaMA-2 7B-70B on The Pile, RMSNorm vs DyT).

A batch is (B, seq_len + 1) packed tokens from ``dyt.data.text``; the model reads the first ``seq_len``
and the loss is the mean next-token cross-entropy over the last ``seq_len``. Validation reports the
per-token loss and its perplexity over the held-out split (``val/loss``, ``val/ppl``). The zero-shot
"score" of Table 4 comes from ``dyt.metrics.lm_eval`` through ``eval_extra`` (eval.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

import models
from dyt.data.text import build_text_dataset
from dyt.engine.evaluation import sharded_sums
from dyt.engine.task import StepInfo, Task


def next_token_loss(model: nn.Module, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]`` (logits taken in fp32)."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction=reduction)


class LanguageModelingTask(Task):
    """Next-token prediction with a LLaMA preset and any norm (``configs/task/lm.yaml``)."""

    headline_metric = "val/loss"
    headline_mode = "min"
    throughput_unit = "tokens"

    @property
    def units_per_sample(self) -> float:
        return float(self.cfg.data.seq_len)

    def build_model(self) -> nn.Module:
        return models.create_model(self.cfg.model, norm=self.cfg.norm)

    def flops_per_sample(self, model: nn.Module) -> float | None:
        seq_len = int(self.cfg.data.seq_len)
        return float(seq_len * model.flops_per_token(seq_len)) if hasattr(model, "flops_per_token") else None

    def train_data(self) -> Dataset:
        return build_text_dataset(self.cfg.data, "train")

    def eval_data(self) -> Dataset:
        data = build_text_dataset(self.cfg.data, "val")
        limit = self.cfg.task.get("eval_max_sequences")
        return data if limit is None else Subset(data, range(min(int(limit), len(data))))

    def training_step(
        self, model: nn.Module, batch: torch.Tensor, info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return next_token_loss(model, batch), {}

    def eval_extra(
        self, model: nn.Module, device: torch.device, run_dir: Any, source: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        """The zero-shot lm-eval score of Table 4 (``task.lm_eval`` options; eval.py only)."""
        from dyt.metrics.lm_eval import lm_eval_hook

        return lm_eval_hook(self.cfg, model, device)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        def sums(tokens: torch.Tensor) -> torch.Tensor:
            loss = next_token_loss(model, tokens, reduction="sum")
            return torch.stack([loss.double(), torch.tensor(tokens[:, 1:].numel(), device=device).double()])

        loss_sum, count = sharded_sums(
            self.eval_data(), sums, batch_size=self.cfg.task.eval_batch_size, device=device
        ).tolist()
        loss = loss_sum / count
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
