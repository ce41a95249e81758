"""Respacing: sample with a subset of the training process's steps (DiT samples with 250 of 1000).

Keeping steps S of the original process and setting ``beta_i = 1 - alpha_bar_{s_i} / alpha_bar_{s_{i-1}}``
gives a shorter process with the same marginals q(x_t | x_0) at the kept steps (Nichol & Dhariwal 2021,
Sec. 4); the model still receives the original timestep values.
"""

from __future__ import annotations

import torch

from dyt.diffusion.gaussian import GaussianDiffusion, linear_beta_schedule


def space_timesteps(num_timesteps: int, section_counts: int | str) -> list[int]:
    """The kept steps: the process is cut into equal sections and each keeps evenly strided steps.

    ``section_counts`` is one count (``250``) or comma-separated counts per section (``"10,15,20"``).
    """
    counts = [int(c) for c in str(section_counts).split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(
                f"cannot keep {count} steps from a section of {size} steps "
                f"(respacing {section_counts!r} of {num_timesteps} steps)"
            )
        stride = (size - 1) / (count - 1) if count > 1 else 1
        kept += [start + round(stride * k) for k in range(count)]
        start += size
    return sorted(set(kept))


def create_diffusion(num_timesteps: int = 1000, respacing: int | str | None = None) -> GaussianDiffusion:
    """The linear-beta process of ``num_timesteps`` steps, respaced to ``respacing`` steps when given
    (``None`` or ``""`` keeps every step; training always uses every step)."""
    betas = linear_beta_schedule(num_timesteps)
    if respacing in (None, ""):
        return GaussianDiffusion(betas)
    kept = space_timesteps(num_timesteps, respacing)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)[kept]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return GaussianDiffusion(1.0 - alphas_cumprod / previous, timestep_map=kept)
