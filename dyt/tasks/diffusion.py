"""Class-conditional image generation with DiT (paper Table 3: DiT-B/4, L/4, XL/2 on ImageNet 256).

Training follows DiT: a timestep uniform in [0, 1000) and Gaussian noise per sample, drawn from the
global torch RNG (seeded by the trainer), the epsilon-MSE plus variational-bound loss
(:func:`training_losses`, from the terms of ``dyt.diffusion``), label dropout 0.1 inside the model for
classifier-free guidance.

Spaces (``task.space``):
- ``latent``: 32x32x4 SD-VAE latents of 256 px images, pre-extracted (``data.format: latents``) or
  encoded from an ImageFolder on the device every step (``data.format: images``), see ``dyt.data.latents``;
- ``pixel``: the image itself in [-1, 1]: scikit-learn digits (``data=digits data.normalize=minus_one_one``,
  the CPU demo) or an ImageFolder (``data.format: images``) at ``data.image_size``.

``evaluate`` gives a cheap, deterministic metric for every evaluation: the diffusion loss on held-out
data with timesteps and noise from a fixed seed. ``eval_extra`` (eval.py) samples from the model and
computes FID (``dyt.metrics.fid``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import models
from dyt.data.images import build_image_dataset
from dyt.data.latents import LatentDataset, decode, encode, image_folder, load_vae
from dyt.diffusion import GaussianDiffusion, create_diffusion, sample
from dyt.diffusion.gaussian import mean_flat
from dyt.engine.distributed import broadcast_object
from dyt.engine.evaluation import rank_and_world, sharded_sums
from dyt.engine.task import StepInfo, Task
from dyt.metrics import fid


def training_losses(
    diffusion: GaussianDiffusion,
    model: Callable[..., torch.Tensor],
    x_start: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    **model_kwargs,
) -> dict[str, torch.Tensor]:
    """DiT's per-sample loss at steps ``t``: ``mse`` on eps, plus ``vb`` when the variance is learned
    (DiT ``diffusion/gaussian_diffusion.py``, ``training_losses``; Nichol & Dhariwal 2021, Sec. 3.1).

    Returns ``loss`` (N,), ``mse`` (N,) and, with a learned variance, ``vb`` (N,).
    """
    x_t = diffusion.q_sample(x_start, t, noise)
    model_output = model(x_t, diffusion.model_timesteps(t), **model_kwargs)
    channels = x_start.shape[1]
    terms = {"mse": mean_flat((noise - model_output[:, :channels]) ** 2)}
    if model_output.shape[1] == 2 * channels:
        eps, v = model_output.split(channels, dim=1)
        # The bound trains only the variance: the mean (through eps) gets its gradient from the MSE.
        terms["vb"] = diffusion.vb_terms_bpd(torch.cat([eps.detach(), v], dim=1), x_start, x_t, t)
    terms["loss"] = terms["mse"] + terms.get("vb", 0.0)
    return terms


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
        """The data config says what the data is: pre-extracted latents (``format: latents``), an
        ImageFolder (``format: images``: encoded by the VAE in latent space), or, in pixel space, an
        image data set of ``dyt.data.images`` with pixels in [-1, 1] (``normalize: minus_one_one``)."""
        data, train = self.cfg.data, split == "train"
        fmt = data.get("format")
        if self.space == "latent" and fmt == "latents":
            root = Path(data.latents_root).expanduser() / split
            if not train and not (root / "meta.json").exists():
                return None  # no held-out latents extracted: no validation loss
            return LatentDataset(root, flip=train)
        if fmt == "images":
            root = Path(data.root).expanduser() / split
            if not train and not root.is_dir():
                return None
            return image_folder(root, data.image_size, flip=train)
        if self.space == "latent":
            raise ValueError(f"data.format must be 'latents' or 'images' in latent space, got {fmt!r}")
        if data.get("normalize") != "minus_one_one":
            raise ValueError(
                f"pixel-space diffusion generates images in [-1, 1], but data={data.name} is normalized "
                f"{data.get('normalize')!r}: set data.normalize=minus_one_one, or data.format=images for an ImageFolder"
            )
        return build_image_dataset(data, split)

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
        return training_losses(self.diffusion, model, x0, t, noise, y=y)

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

    def eval_extra(
        self, model: nn.Module, device: torch.device, run_dir: str | Path, source: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        """FID of ``task.fid.num_samples`` class-balanced samples (written, resumably, under
        ``<run_dir>/samples/``; every rank generates its share) against ``task.fid.reference``, plus a
        grid PNG of samples per class (``<run_dir>/samples_grid.png``). Rank 0 scores, every rank returns."""
        f, run_dir = self.cfg.task.fid, Path(run_dir)
        was_training = model.training
        model.eval()
        samples = fid.generate_samples(
            lambda labels, g: self.generate(model, labels, g),
            f.num_samples,
            model.num_classes,
            run_dir / "samples",
            device,
            f.batch_size,
            f.chunk_size,
            f.seed,
            provenance=dict(source) if source is not None else None,
        )
        model.train(was_training)
        metrics: dict[str, float] = {}
        if rank_and_world()[0] == 0:
            grid = fid.class_grid(samples, model.num_classes, f.grid_per_class)
            fid.save_grid(grid, run_dir / "samples_grid.png", nrow=f.grid_per_class, scale=f.grid_scale)
            extractor, (mu_ref, sigma_ref) = self._fid_reference(device, run_dir)
            mu, sigma = fid.feature_statistics(fid.extract_features(extractor, samples, device))
            metrics = {
                "fid": fid.frechet_distance(mu, sigma, mu_ref, sigma_ref),
                "fid_num_samples": float(len(samples)),
            }
        return broadcast_object(metrics)

    def _fid_reference(self, device: torch.device, run_dir: Path) -> tuple[nn.Module, tuple[np.ndarray, np.ndarray]]:
        """The feature network ``task.fid.features`` names and the reference statistics in its space:
        ``inception`` against ``task.fid.reference``; ``digits`` (the CPU demo, NOT an Inception FID)
        against the real train images."""
        from dyt.metrics.features import DigitFeatures, InceptionFeatures

        f = self.cfg.task.fid
        if f.features == "digits":
            extractor, _ = DigitFeatures.fit()
            real = fid.to_uint8(self.train_data().images)
            return extractor, fid.feature_statistics(fid.extract_features(extractor, real, device))
        if f.features != "inception":
            raise ValueError(f"task.fid.features must be 'inception' or 'digits', got {f.features!r}")
        if f.reference is None:
            raise ValueError(
                "task.fid.reference is required: an ADM .npz (e.g. VIRTUAL_imagenet256_labeled.npz) "
                "or a folder of reference images"
            )
        extractor = InceptionFeatures(f.inception_path)
        cache = None if str(f.reference).endswith(".npz") else run_dir / "fid_reference_stats.npz"
        return extractor, fid.reference_statistics(f.reference, extractor, device, cache=cache)
