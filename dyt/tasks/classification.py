"""Supervised image classification (paper Table 1: ViT and ConvNeXt on ImageNet-1K).

Loss: soft-target cross-entropy under Mixup/CutMix, else cross-entropy with label smoothing, as in
the ConvNeXt recipe the paper follows. Metrics: top-1 / top-5 accuracy and loss on the validation set;
the trainer evaluates the raw and the EMA model (keys ``val/top1`` and ``val/top1_ema``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import models
from dyt.data.images import build_image_dataset
from dyt.engine.evaluation import sharded_sums
from dyt.engine.task import StepInfo, Task


class ClassificationTask(Task):
    """Image classification with any registered backbone and norm."""

    headline_metric = "val/top1"
    throughput_unit = "images"

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
        data = build_image_dataset(self.cfg.data, "train")
        classes = getattr(data, "classes", None)  # ImageFolder's class folders
        if classes is not None and len(classes) != self.cfg.data.num_classes:
            raise ValueError(
                f"data.num_classes={self.cfg.data.num_classes} but the training set has {len(classes)} classes "
                f"({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''}); "
                f"set data.num_classes={len(classes)}"
            )
        return data

    def eval_data(self) -> Dataset:
        return build_image_dataset(self.cfg.data, "val")

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The default groups, split by depth when ``task.layer_decay`` is set (MAE fine-tuning,
        util/lr_decay.py): the lr of layer ``l`` of ``L`` is scaled by ``layer_decay ** (L - l)``, so
        the head trains at the full lr and the patch embedding at the smallest."""
        groups = super().param_groups(model, weight_decay)
        decay = self.cfg.task.get("layer_decay")
        if decay is None:
            return groups
        model = getattr(model, "module", model)
        if not hasattr(model, "layer_id"):
            raise ValueError(
                f"task.layer_decay={decay} needs a model with layer_id() (ViT); "
                f"{type(model).__name__} has none: set task.layer_decay=null"
            )
        names = {id(p): n for n, p in model.named_parameters()}
        top = max(model.layer_id(n) for n in names.values())
        split: dict[tuple[int, float], dict[str, Any]] = {}
        for group in groups:
            for p in group["params"]:
                layer = model.layer_id(names[id(p)])
                key = (layer, group["weight_decay"])
                lr_scale = decay ** (top - layer)
                split.setdefault(key, {"params": [], "weight_decay": group["weight_decay"], "lr_scale": lr_scale})
                split[key]["params"].append(p)
        return list(split.values())

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
            loss = torch.sum(-targets * F.log_softmax(model(images), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(model(images), labels, label_smoothing=self.cfg.task.label_smoothing)
        return loss, {}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        def sums(batch: Any) -> torch.Tensor:
            images, labels = batch
            logits = model(images).float()
            hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]
            loss = F.cross_entropy(logits, labels, reduction="sum")
            return torch.stack([hits[:, 0].sum(), hits.any(-1).sum(), loss, torch.tensor(len(labels), device=device)])

        batch_size, workers = self.cfg.task.eval_batch_size, self.cfg.trainer.num_workers
        totals = sharded_sums(self.eval_data(), sums, batch_size=batch_size, device=device, num_workers=workers)
        top1, top5, loss, n = totals.tolist()
        return {"val/top1": 100.0 * top1 / n, "val/top5": 100.0 * top5 / n, "val/loss": loss / n}
