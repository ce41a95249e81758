"""DINO self-distillation pretraining (paper Table 2: DINO ViT-B/16 and ViT-B/8 on ImageNet-1K).

The model (models/dino.py) holds a student and a teacher; checkpoints carry both. Per optimizer step,
in DINO's order (main_dino.py ``train_one_epoch``):

1. ``training_step``: the teacher sees the two global crops, the student every crop; the loss is the
   cross-entropy between the teacher's centred, sharpened distribution and the student's, over every
   (teacher crop, other student crop) pair (:func:`dino_loss`).
2. ``before_optimizer_step``: DINO's per-parameter gradient clipping (each parameter's gradient norm
   to at most ``clip_grad``; DINO utils.py ``clip_gradients``), then, during the first
   ``freeze_last_layer_epochs``, the last layer of the student's head gets no update.
3. ``after_optimizer_step``: the teacher moves towards the student by an EMA whose momentum follows a
   cosine from 0.996 to 1 (:func:`ema_update`), and the centre moves towards the mean teacher output of
   the global batch with momentum 0.9 (:func:`updated_center`).

Teacher momentum and teacher temperature are per-step task schedules (``schedules()``; logged as
``sched/teacher_momentum`` and ``sched/teacher_temp``); weight decay follows ``optim.schedules``. The
centre is task state, saved in every checkpoint. The monitor is DINO's weighted 20-NN classifier on the
teacher backbone's class-token features (DINO eval_knn.py), as ``val/knn_top1``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import models
from dyt.data.images import build_image_dataset, imagenet_transform
from dyt.data.ssl import MultiCrop, build_view_dataset
from dyt.engine.evaluation import sharded_sums
from dyt.engine.schedule import build_scalar_schedule
from dyt.engine.task import StepInfo, Task

# ---- the published formulas ----------------------------------------------------------------------------


def dino_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    num_crops: int,
    num_global: int = 2,
) -> torch.Tensor:
    """DINO's loss (DINO Sec. 3.1, main_dino.py ``DINOLoss``): mean over pairs (teacher crop ``t``,
    student crop ``s != t``) of ``-sum softmax((teacher_t - center) / teacher_temp) *
    log_softmax(student_s / student_temp)``, averaged over the batch. Outputs are crop-major."""
    student = (student_out / student_temp).chunk(num_crops)
    teacher = (
        F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach().chunk(len(teacher_out) // len(student[0]))
    )
    total, pairs = student_out.new_zeros(()), 0
    for t, target in enumerate(teacher):
        for s, logits in enumerate(student):
            if s != t:  # the same view is not compared with itself
                total = total + torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
                pairs += 1
    return total / pairs


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_sum: torch.Tensor, count: int, momentum: float) -> torch.Tensor:
    """``center * m + mean(teacher outputs) * (1 - m)``, the mean over the global batch: sums and counts
    are added over ranks (DINO ``update_center``)."""
    totals = torch.cat([teacher_sum.double().flatten(), teacher_sum.new_tensor([count], dtype=torch.float64)])
    if dist.is_initialized():
        dist.all_reduce(totals)
    batch_center = (totals[:-1] / totals[-1]).to(center.dtype).view_as(center)
    return center * momentum + batch_center * (1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = m * teacher + (1 - m) * student`` for every parameter (DINO's momentum teacher)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


@torch.no_grad()
def clip_per_parameter(params, max_norm: float) -> None:
    """Scale each parameter's gradient to norm at most ``max_norm`` (DINO utils.py ``clip_gradients``;
    per parameter, unlike ``clip_grad_norm_``'s global norm)."""
    for p in params:
        if p.grad is not None:
            norm = p.grad.norm(2)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def knn_predict(
    features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int, temperature: float, num_classes: int
) -> torch.Tensor:
    """Weighted k-NN (DINO eval_knn.py ``knn_classifier``): each of the ``k`` most cosine-similar bank
    items votes for its label with weight ``exp(similarity / temperature)``; features are L2-normalised."""
    similarity, index = (features @ bank.T).topk(min(k, len(bank)), dim=1)
    votes = (
        F.one_hot(bank_labels[index], num_classes).to(similarity.dtype) * (similarity / temperature).exp()[..., None]
    )
    return votes.sum(dim=1).argmax(dim=1)


def unwrap(model: nn.Module) -> nn.Module:
    """The DINO module inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return getattr(model, "module", model)


# ---- the task ---------------------------------------------------------------------------------------


class DINOTask(Task):
    """DINO pretraining of any ViT backbone with any norm (see the module docstring)."""

    headline_metric = "val/knn_top1"
    headline_mode = "max"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.center: torch.Tensor | None = None  # (1, out_dim); created on the device at the first step
        self._teacher_sum: torch.Tensor | None = None  # teacher outputs of the step's micro-batches
        self._teacher_count = 0

    def build_model(self) -> nn.Module:
        return models.create_model(self.cfg.model, norm=self.cfg.norm)

    def train_data(self) -> Dataset:
        c = self.cfg.task.multicrop
        return build_view_dataset(
            self.cfg.data,
            lambda photometric: MultiCrop(
                c.global_size, c.local_size, c.global_scale, c.local_scale, c.local_crops, photometric
            ),
        )

    def eval_data(self) -> Dataset:
        return build_image_dataset(self.cfg.data, "val")

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, Any]:
        t = self.cfg.task
        return {
            name: build_scalar_schedule(t[name], total_steps, steps_per_epoch)
            for name in ("teacher_momentum", "teacher_temp")
        }

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        crops, _ = batch
        student_out, teacher_out = model(crops)
        student_out, teacher_out = student_out.float(), teacher_out.float()
        if self.center is None:
            self.center = teacher_out.new_zeros(1, teacher_out.shape[-1])
        self.center = self.center.to(teacher_out.device)
        t = self.cfg.task
        loss = dino_loss(
            student_out, teacher_out, self.center, t.student_temp, info.scalars["teacher_temp"], len(crops)
        )
        step_sum = teacher_out.detach().sum(dim=0, keepdim=True)
        self._teacher_sum = step_sum if self._teacher_sum is None else self._teacher_sum + step_sum
        self._teacher_count += len(teacher_out)
        return loss, {}

    def probe_forward(self, model: nn.Module, batch: Any, info: StepInfo) -> None:
        """The student on every crop (``training_step`` would also update the center's running sums)."""
        unwrap(model).student(batch[0])

    def after_calibration(self, model: nn.Module) -> None:
        unwrap(model).copy_student_to_teacher()  # DINO's teacher starts as the student

    def before_optimizer_step(self, model: nn.Module, info: StepInfo) -> None:
        student = unwrap(model).student
        if self.cfg.task.clip_grad is not None:
            clip_per_parameter(student.parameters(), self.cfg.task.clip_grad)
        if info.epoch < self.cfg.task.freeze_last_layer_epochs:
            for p in student.head.last_layer.parameters():
                p.grad = None  # AdamW skips parameters without gradient: no update, no decay (as DINO)

    def after_optimizer_step(self, model: nn.Module, info: StepInfo) -> None:
        dino = unwrap(model)
        ema_update(dino.teacher, dino.student, info.scalars["teacher_momentum"])
        self.center = updated_center(self.center, self._teacher_sum, self._teacher_count, self.cfg.task.center_momentum)
        self._teacher_sum, self._teacher_count = None, 0

    def state_dict(self) -> dict[str, Any]:
        return {} if self.center is None else {"center": self.center.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.center = state.get("center")

    # ---- k-NN monitor ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        knn = self.cfg.task.knn
        backbone = unwrap(model).teacher.backbone
        bank, bank_labels = self._feature_bank(backbone, device)
        num_classes = int(self.cfg.data.num_classes)

        def correct(batch: Any) -> torch.Tensor:
            images, labels = batch
            features = F.normalize(backbone(images).float(), dim=-1)
            pred = knn_predict(features, bank, bank_labels, knn.k, knn.temperature, num_classes)
            return torch.stack([(pred == labels).sum(), torch.tensor(len(labels), device=device)]).double()

        hits, n = sharded_sums(
            self.eval_data(),
            correct,
            batch_size=knn.batch_size,
            device=device,
            num_workers=self.cfg.trainer.num_workers,
        ).tolist()
        return {"val/knn_top1": 100.0 * hits / n}

    def _feature_bank(self, backbone: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised features and labels of the training images (without augmentation), the same on
        every rank; ``task.knn.bank_size`` caps how many (null: all)."""
        knn = self.cfg.task.knn
        data = self.cfg.data
        train = build_image_dataset(
            data, "train", transform=None if data.name == "digits" else imagenet_transform(data, False)
        )
        if knn.bank_size is not None:
            train = Subset(train, range(min(int(knn.bank_size), len(train))))
        features, labels = [], []
        for images, y in DataLoader(train, batch_size=knn.batch_size, num_workers=self.cfg.trainer.num_workers):
            features.append(F.normalize(backbone(images.to(device)).float(), dim=-1))
            labels.append(torch.as_tensor(y, device=device))
        return torch.cat(features), torch.cat(labels)
