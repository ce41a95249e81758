"""Class-conditional ancestral sampling with classifier-free guidance (Ho & Salimans 2022).

With ``cfg_scale`` s != 1 the model runs on the batch twice, once with the labels and once with the
null class, and the noise prediction becomes ``eps_uncond + s * (eps_cond - eps_uncond)``; the learned
variance is taken from the conditional half. DiT's ``sample.py`` guides only the first 3 of the 4
latent channels "for exact reproducibility" of its paper; ``guidance_channels=3`` reproduces that,
the default guides every channel (the standard formulation).
"""

from __future__ import annotations

import torch
from torch import nn

from dyt.diffusion.gaussian import GaussianDiffusion


@torch.no_grad()
def guided_output(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float,
    null_label: int,
    guidance_channels: int | None = None,
) -> torch.Tensor:
    """The model's output at (x, t, labels), guided with ``cfg_scale`` against the ``null_label`` class."""
    if cfg_scale == 1.0:
        return model(x, t, labels)
    n = x.shape[0]
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null_label)]))
    cond, uncond = out[:n], out[n:]
    g = x.shape[1] if guidance_channels is None else guidance_channels
    guided = uncond[:, :g] + cfg_scale * (cond[:, :g] - uncond[:, :g])
    return torch.cat([guided, cond[:, g:]], dim=1)


@torch.no_grad()
def sample(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    labels: torch.Tensor,
    shape: tuple[int, ...],
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    guidance_channels: int | None = None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Draw ``len(labels)`` samples of per-sample ``shape`` (C, H, W) by ancestral sampling over every step
    of ``diffusion`` (respace it for fewer steps). All noise comes from ``generator``, so a seeded
    generator gives the same samples on the same device. The model is used as is: call ``model.eval()``
    first so that label dropout is off. ``clip_denoised`` clamps predicted x_0 to [-1, 1] (pixels)."""
    if cfg_scale != 1.0 and not hasattr(model, "num_classes"):
        raise ValueError("classifier-free guidance needs a model with `num_classes` (its null class index)")
    null_label = getattr(model, "num_classes", -1)
    device = labels.device
    x = torch.randn((len(labels), *shape), generator=generator, device=device)
    for i in reversed(range(diffusion.num_timesteps)):
        t = torch.full((len(labels),), i, device=device, dtype=torch.long)
        out = guided_output(model, x, diffusion.model_timesteps(t), labels, cfg_scale, null_label, guidance_channels)
        noise = torch.randn(x.shape, generator=generator, device=device)
        x = diffusion.p_sample(out, x, t, noise, clip_denoised=clip_denoised)
    return x
