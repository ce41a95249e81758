"""Supervised image classification (paper Table 1: ViT and ConvNeXt on ImageNet-1K).

Loss: soft-target cross-entropy under Mixup/CutMix, else cross-entropy with label smoothing, as in
the ConvNeXt recipe the paper follows. Metrics: top-1 / top-5 accuracy and loss on the validation set;
the trainer evaluates the raw and the EMA model (keys ``val/top1`` and ``val/top1_ema``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import models
from dyt.data.images import build_image_dataset
from dyt.tasks.base import Task


class ClassificationTask(Task):
    """Image classification with any registered backbone and norm."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        t = cfg.task
        self.mixup = None
        if t.mixup > 0 or t.cutmix > 0:
            from timm.data import Mixup

            # The label smoothing goes into Mixup's soft targets (timm / ConvNeXt recipe).
            self.mixup = Mixup(
                mixup_alpha=t.mixup,
                cutmix_alpha=t.cutmix,
                prob=t.mixup_prob,
                switch_prob=t.mixup_switch_prob,
                mode="batch",
                label_smoothing=t.label_smoothing,
                num_classes=cfg.data.num_classes,
            )

    def build_model(self) -> nn.Module:
        return models.create_model(self.cfg.model, norm=self.cfg.norm)

    def train_data(self) -> Dataset:
        return build_image_dataset(self.cfg.data, "train")

    def eval_data(self) -> Dataset:
        return build_image_dataset(self.cfg.data, "val")

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
            loss = torch.sum(-targets * F.log_softmax(model(images), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(model(images), labels, label_smoothing=self.cfg.task.label_smoothing)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        data = self.eval_data()
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        shard = torch.utils.data.Subset(data, range(rank, len(data), world))
        loader = DataLoader(shard, batch_size=self.cfg.task.eval_batch_size, num_workers=self.cfg.trainer.num_workers)
        was_training = model.training
        model.eval()
        # correct@1, correct@5, summed loss, count: summed over ranks, so every rank returns the same.
        totals = torch.zeros(4, dtype=torch.float64, device=device)
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images).float()
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hits = top5 == labels[:, None]
            totals += torch.stack(
                [
                    hits[:, 0].sum(),
                    hits.any(-1).sum(),
                    F.cross_entropy(logits, labels, reduction="sum"),
                    torch.tensor(len(labels), device=device),
                ]
            ).double()
        if dist.is_initialized():
            dist.all_reduce(totals)
        model.train(was_training)
        top1, top5_, loss, n = totals.tolist()
        return {"val/top1": 100.0 * top1 / n, "val/top5": 100.0 * top5_ / n, "val/loss": loss / n}
