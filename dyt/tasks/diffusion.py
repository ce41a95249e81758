"""Class-conditional image generation with DiT (paper Table 3: DiT-B/4, L/4, XL/2 on ImageNet 256).

Training follows DiT: a timestep uniform in [0, 1000) and Gaussian noise per sample, drawn from the
global torch RNG (seeded by the trainer), the epsilon-MSE plus variational-bound loss of
``dyt.diffusion``, label dropout 0.1 inside the model for classifier-free guidance.

Spaces (``task.space``):
- ``latent``: 32x32x4 SD-VAE latents of 256 px images, pre-extracted (``data.format: latents``) or
  encoded from an ImageFolder on the device every step (``data.format: images``), see ``dyt.data.latents``;
- ``pixel``: the image itself in [-1, 1]: scikit-learn digits (``data=digits``, the CPU demo) or an
  ImageFolder at ``data.image_size``.

``evaluate`` gives a cheap, deterministic metric for every evaluation: the diffusion loss on held-out
data with timesteps and noise from a fixed seed. ``eval_extra`` (eval.py) samples from the model and
computes FID (``dyt.metrics.fid``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import models
from dyt.data.latents import LatentDataset, decode, encode, image_folder, load_vae
from dyt.diffusion import create_diffusion, sample
from dyt.engine.evaluation import rank_and_world, sharded_sums
from dyt.tasks.base import StepInfo, Task


class DigitsPixels(Dataset):
    """scikit-learn's 8x8 digits as (1, 8, 8) images in [-1, 1] (pixel values 0..16), with the same
    stratified split as the classification quickstart (``test_fraction``, ``split_seed``)."""

    def __init__(self, split: str, test_fraction: float = 0.2, split_seed: int = 0) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "test"):
            raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
        digits = load_digits()
        train_idx, test_idx = train_test_split(
            np.arange(len(digits.target)), test_size=test_fraction, random_state=split_seed, stratify=digits.target
        )
        idx = train_idx if split == "train" else test_idx
        self.images = torch.from_numpy(digits.images[idx].astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
        self.labels = torch.from_numpy(digits.target[idx]).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


class DiffusionTask(Task):
    """DiT training and evaluation in latent or pixel space (see the module docstring)."""

    headline_metric = "fid"
    headline_mode = "min"
    throughput_unit = "images"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        t = cfg.task
        if t.space not in ("latent", "pixel"):
            raise ValueError(f"task.space must be 'latent' or 'pixel', got {t.space!r}")
        self.space = t.space
        self.diffusion = create_diffusion(t.num_timesteps)
        self._vae = None

    # ---- model and data -------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return models.create_model(self.cfg.model, norm=self.cfg.norm)

    def _dataset(self, split: str) -> Dataset | None:
        data, train = self.cfg.data, split == "train"
        if self.space == "pixel" and data.name == "digits":
            return DigitsPixels("train" if train else "test", data.test_fraction, data.split_seed)
        if self.space == "latent" and data.format == "latents":
            root = Path(data.latents_root).expanduser() / split
            if not train and not (root / "meta.json").exists():
                return None  # no held-out latents extracted: no validation loss
            return LatentDataset(root, flip=train)
        if self.space == "pixel" or data.format == "images":
            root = Path(data.root).expanduser() / split
            if not train and not root.is_dir():
                return None
            return image_folder(root, data.image_size, flip=train)
        raise ValueError(f"data.format must be 'latents' or 'images' in latent space, got {data.format!r}")

    def train_data(self) -> Dataset:
        return self._dataset("train")

    def eval_data(self) -> Dataset | None:
        return self._dataset(self.cfg.data.get("val_split", "val"))

    def vae(self, device: torch.device):
        """The frozen SD-VAE (``task.vae``: hub id or local path), loaded once, on ``device``."""
        if self._vae is None:
            self._vae = load_vae(self.cfg.task.vae)
        return self._vae.to(device)

    def _x0(self, x: torch.Tensor) -> torch.Tensor:
        """The diffusion's clean input: encoded latents when training from images in latent space."""
        if self.space == "latent" and self.cfg.data.format == "images":
            return encode(self.vae(x.device), x, scale=self.cfg.task.latent_scale)
        return x

    # ---- training -------------------------------------------------------------------------------
    def _losses(self, model: nn.Module, batch: Any, generator: torch.Generator | None = None) -> dict:
        x, y = batch
        x0 = self._x0(x)
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        return self.diffusion.training_losses(model, x0, t, noise, y=y)

    def training_step(self, model: nn.Module, batch: Any, info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self._losses(model, batch)
        logs = {k: v.detach().mean().item() for k, v in terms.items() if k != "loss"}
        return terms["loss"].mean(), logs

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Held-out diffusion loss (``val/loss``, ``val/mse``, ``val/vb``) with timesteps and noise from
        ``task.eval_seed`` (the same draws for every model), over at most ``task.eval_max_samples``."""
        data = self.eval_data()
        if data is None:
            return {}
        t = self.cfg.task
        generator = torch.Generator(device).manual_seed(t.eval_seed + rank_and_world()[0])

        def sums(batch: Any) -> torch.Tensor:
            terms = self._losses(model, batch, generator)
            vb = terms.get("vb", terms["mse"] * 0).sum()
            count = torch.tensor(float(len(batch[1])), device=device)
            return torch.stack([terms["loss"].sum(), terms["mse"].sum(), vb, count])

        loss, mse, vb, count = sharded_sums(
            data, sums, batch_size=t.eval_batch_size, device=device, size=t.eval_max_samples or None
        ).tolist()
        return {"val/loss": loss / count, "val/mse": mse / count, "val/vb": vb / count}

    # ---- sampling and FID -----------------------------------------------------------------------
    def sample_shape(self, model: nn.Module) -> tuple[int, int, int]:
        size = model.grid_size * model.patch_size
        return model.in_channels, size, size

    @torch.no_grad()
    def generate(self, model: nn.Module, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Images in [-1, 1] for ``labels`` (on the model's device): respaced DDPM sampling with
        ``task.sample_steps`` steps and guidance ``task.cfg_scale``, decoded by the VAE in latent space."""
        t = self.cfg.task
        x = sample(
            model,
            create_diffusion(t.num_timesteps, t.sample_steps),
            labels,
            self.sample_shape(model),
            cfg_scale=t.cfg_scale,
            generator=generator,
            guidance_channels=t.guidance_channels,
            clip_denoised=self.space == "pixel",
        )
        if self.space == "latent":
            return decode(self.vae(labels.device), x, scale=t.latent_scale)
        return x.clamp(-1, 1)

    def eval_extra(self, model: nn.Module, device: torch.device, run_dir: str | Path) -> dict[str, float]:
        """FID of ``task.fid.num_samples`` class-balanced samples (written, resumably, under
        ``<run_dir>/samples/``) against ``task.fid.reference``, plus a sample grid PNG."""
        from dyt.metrics.fid import fid_for_task

        return fid_for_task(self, model, device, Path(run_dir))
