"""Masked-autoencoder pretraining (paper Table 2: MAE ViT-B and ViT-L on ImageNet-1K).

The model (models/mae.py) returns its predicted patches and the mask; the task's loss
(:func:`mae_loss`) is the mean squared error of the predicted pixels of the removed patches (per-patch
normalised targets with the model's ``norm_pix_loss``). The trainer's per-step RNG
seeding makes the random masks of a resumed run those of an uninterrupted one. The monitor is the same
loss on the evaluation images with a fixed mask per image (``val/loss``, the headline: lower is better);
``eval.py`` also draws a figure of reconstructions (:func:`reconstruction_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import models
from dyt.data.images import build_image_dataset
from dyt.data.ssl import build_view_dataset, mae_transform
from dyt.engine.evaluation import sharded_sums
from dyt.engine.task import StepInfo, Task

EVAL_MASK_SEED = 1234  # the evaluation masks depend only on this and the image's index


class Indexed(Dataset):
    """``(image, index)`` for every item of an ``(image, label)`` dataset (fixed per-image masks)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.base[i][0], i


def fixed_noise(indices: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Masking noise (N, num_patches) that depends only on each image's index."""
    rows = [torch.rand(num_patches, generator=torch.Generator().manual_seed(EVAL_MASK_SEED + int(i))) for i in indices]
    return torch.stack(rows).to(indices.device)


def mae_loss(model: nn.Module, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the removed patches only (MAE Sec. 3; ``forward_loss`` of MAE's
    ``models_mae.py``), with per-patch normalised targets when ``model.norm_pix_loss``."""
    target = model.patchify(imgs)
    if model.norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAETask(Task):
    """MAE pretraining of any encoder size with any norm."""

    headline_metric = "val/loss"
    headline_mode = "min"

    def build_model(self) -> nn.Module:
        return models.create_model(self.cfg.model, norm=self.cfg.norm)

    def train_data(self) -> Dataset:
        data, scale = self.cfg.data, self.cfg.task.crop_scale
        return build_view_dataset(data, lambda photometric: mae_transform(data.img_size, scale, photometric))

    def eval_data(self) -> Dataset:
        return Indexed(build_image_dataset(self.cfg.data, "val"))

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        images, _ = batch
        return mae_loss(model, images, *model(images)), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        num_patches = model.patch_embed.num_patches

        def loss_sum(batch: Any) -> torch.Tensor:
            # Every image has the same number of removed patches, so the mean of per-batch means
            # weighted by batch size is the mean over all removed patches of the set.
            images, index = batch
            loss = mae_loss(model, images, *model(images, noise=fixed_noise(index, num_patches)))
            return torch.stack([loss.double() * len(images), torch.tensor(len(images), device=device).double()])

        total, n = sharded_sums(
            self.eval_data(),
            loss_sum,
            batch_size=self.cfg.task.eval_batch_size,
            device=device,
            num_workers=self.cfg.trainer.num_workers,
        ).tolist()
        return {"val/loss": total / n}

    def eval_extra(
        self, model: nn.Module, device: torch.device, run_dir: Any, source: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        """Writes ``<run_dir>/reconstructions.png`` (8 evaluation images, redrawn every time: it costs a
        single forward pass); no extra metrics."""
        reconstruction_figure(model, self.eval_data(), Path(run_dir) / "reconstructions.png", device)
        return {}


@torch.no_grad()
def reconstruction_figure(model: nn.Module, data: Dataset, path: Path, device: torch.device, n: int = 8) -> None:
    """Rows: original, masked input, reconstruction (visible patches pasted back), as MAE's demo shows.
    With ``norm_pix_loss`` the predicted patches are un-normalised with each target patch's statistics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = model.training
    model.eval()
    images = torch.stack([data[i][0] for i in range(n)]).to(device)
    pred, mask = model(images, noise=fixed_noise(torch.arange(n), model.patch_embed.num_patches).to(device))
    if model.norm_pix_loss:
        target = model.patchify(images)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    model.train(was_training)
    patch_mask = mask[..., None].expand(-1, -1, pred.shape[-1])
    masked = model.unpatchify(model.patchify(images) * (1 - patch_mask))
    pasted = model.unpatchify(model.patchify(images) * (1 - patch_mask) + pred * patch_mask)
    rows = {"original": images, f"masked ({model.mask_ratio:.0%})": masked, "reconstruction": pasted}
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)))
    lo, hi = images.min().item(), images.max().item()
    for r, (title, batch) in enumerate(rows.items()):
        for c in range(n):
            img = batch[c].float().cpu()
            ax = axes[r, c]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
