"""Gaussian diffusion for DiT: the linear-beta DDPM process, DiT's training loss (epsilon MSE plus the
variational bound for the learned variance), respaced DDPM sampling and classifier-free guidance."""

from dyt.diffusion.gaussian import GaussianDiffusion, linear_beta_schedule
from dyt.diffusion.respace import create_diffusion, space_timesteps
from dyt.diffusion.sampling import sample

__all__ = ["GaussianDiffusion", "create_diffusion", "linear_beta_schedule", "sample", "space_timesteps"]
