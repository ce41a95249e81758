"""wav2vec 2.0 self-supervised pretraining (paper Table 5: Base and Large on LibriSpeech, LN vs DyT).

The objective is fairseq's ``Wav2vecCriterion`` with ``infonce: true``. For one batch with ``M`` masked
frames (its ``sample_size``):

    loss_sum = sum over the M frames of cross-entropy(logits, 0)                    (natural log)
             + diversity_weight      * M * (G*V - prob_perplexity) / (G*V)
             + feature_penalty_weight * M * mean(feature_encoder_output ** 2)

and fairseq reports ``loss = sum(loss_sum) / sum(M) / ln 2`` over all batches of the split: bits per
masked frame, the number in paper Table 5 (Base 1.95). ``val/loss`` is exactly that over the validation
set; the extra terms are computed in evaluation too, with the quantizer's argmax codes and its soft
``prob_perplexity``, as fairseq does. For training the trainer averages ``loss_sum / M`` over micro-batches
and ranks, where fairseq divides the summed gradient by the summed ``M``: the same objective, with batches
weighted equally rather than by their masked-frame count.

The Gumbel temperature is a per-update schedule of the task, fairseq's ``max(start * decay ** update, end)``
(``task.quantizer_temp``, an ``exponential`` schedule of ``dyt.engine.schedule``), so resume is exact.
Batches are built by total audio samples (``dyt.data.audio.AudioBatchSampler``, fairseq ``max_tokens``):
``trainer.global_batch`` and ``micro_batch`` count samples for this task.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import models
from dyt.data.audio import AudioBatchSampler, build_audio_dataset, collate
from dyt.engine.evaluation import sharded_sums
from dyt.engine.sampler import derive_seed
from dyt.engine.schedule import build_scalar_schedule
from dyt.engine.task import StepInfo, Task
from models.wav2vec2 import Wav2Vec2Output

LOG2 = math.log(2)


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the contrastive ``logits`` (M, 1 + num_negatives) against column 0, the
    target (wav2vec 2.0 Sec. 3.2, Eq. 3; fairseq's ``Wav2vec2Criterion`` and HF both sum it)."""
    return F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long), reduction="sum")


def pretraining_loss(
    out: Wav2Vec2Output, diversity_weight: float, feature_penalty_weight: float
) -> tuple[torch.Tensor, int]:
    """fairseq's summed loss of one batch and its sample size (the number of masked frames)."""
    sample_size = out.num_masked
    extra = diversity_weight * out.diversity + feature_penalty_weight * out.features_pen
    return contrastive_loss(out.logits) + sample_size * extra, sample_size


def correct_count(logits: torch.Tensor) -> int:
    """fairseq's accuracy numerator: the target (column 0) is the argmax and not also the argmin (a row of
    equal logits counts as wrong)."""
    best, worst = logits.argmax(-1) == 0, logits.argmin(-1) == 0
    return int((best & ~worst).sum())


class Wav2Vec2PretrainingTask(Task):
    """Contrastive pretraining of a wav2vec 2.0 preset with any norm (``configs/task/wav2vec2.yaml``)."""

    headline_metric = "val/loss"
    headline_mode = "min"
    throughput_unit = "audio_samples"  # trainer.global_batch counts samples (an upper bound: fairseq max_tokens)

    def build_model(self) -> nn.Module:
        return models.create_model(self.cfg.model, norm=self.cfg.norm)

    def train_data(self) -> Dataset:
        return build_audio_dataset(self.cfg.data, "train")

    def eval_data(self) -> Dataset:
        return build_audio_dataset(self.cfg.data, "val")

    def collate_fn(self) -> Callable:
        return partial(collate, max_sample_size=int(self.cfg.data.max_sample_size))

    def batch_sampler(self, dataset, batch_size: int, rank: int, world_size: int, seed: int) -> AudioBatchSampler:
        """Batches of at most ``batch_size`` audio samples per device (fairseq ``max_tokens``)."""
        return AudioBatchSampler(dataset.sizes, batch_size, rank=rank, world_size=world_size, seed=seed)

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, Callable[[int], float]]:
        spec = self.cfg.task.quantizer_temp
        return {"quantizer_temp": build_scalar_schedule(spec, total_steps, steps_per_epoch)}

    def _loss(self, out: Wav2Vec2Output) -> tuple[torch.Tensor, int]:
        return pretraining_loss(out, self.cfg.task.diversity_weight, self.cfg.task.feature_penalty_weight)

    def training_step(self, model: nn.Module, batch: torch.Tensor, info: StepInfo):
        out = model(batch, temperature=info.scalars["quantizer_temp"])
        loss_sum, sample_size = self._loss(out)
        loss = loss_sum / sample_size
        return loss, {
            "loss_bits": loss.item() / LOG2,
            "prob_perplexity": out.prob_perplexity.item(),
            "code_perplexity": out.code_perplexity.item(),
            "accuracy": correct_count(out.logits.detach()) / sample_size,
        }

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """``val/loss`` as fairseq reports it (bits per masked frame, see the module docstring), plus the
        contrastive part alone and the accuracy. Each validation batch draws its mask and negatives from
        an RNG seeded by the run seed and the batch's first utterance, so the number is reproducible and
        the same on any number of ranks."""
        data = self.eval_data()

        def batch_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            waves, first = batch
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(int(self.cfg.seed), int(first)))
                out = model(waves)
            loss_sum, sample_size = self._loss(out)
            sums = [loss_sum, contrastive_loss(out.logits), sample_size, correct_count(out.logits)]
            return torch.tensor([float(s) for s in sums], dtype=torch.float64, device=device)

        totals = sharded_sums(
            _Indexed(data),
            batch_fn,
            batch_size=int(self.cfg.task.eval_batch_size),
            device=device,
            collate_fn=partial(_eval_collate, max_sample_size=int(self.cfg.data.max_sample_size)),
        )
        loss, contrastive, sample_size, correct = totals.tolist()
        return {
            "val/loss": loss / sample_size / LOG2,
            "val/contrastive": contrastive / sample_size / LOG2,
            "val/accuracy": correct / sample_size,
        }


class _Indexed(Dataset):
    """Validation items with a fixed crop (key 0: the start of the clip) and their index."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index][0], index


def _eval_collate(items, max_sample_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    waves = collate([(w, 0) for w, _ in items], max_sample_size)
    return waves, torch.tensor(items[0][1])
