"""The DDPM forward process, the terms of DiT's training objective and one reverse (sampling) step.

Follows the ADM / DiT formulation (Ho et al. 2020; Nichol & Dhariwal 2021) that the DyT paper's DiT
runs use unchanged:
- a linear beta schedule over 1000 steps (1e-4 to 0.02);
- the model predicts the noise ``eps`` and, with a learned variance, ``v`` in [-1, 1] that interpolates
  the log variance between the posterior variance (``beta_tilde``) and ``beta`` ("learned range");
- the loss (``dyt.tasks.diffusion.training_losses``: the task owns it) is the MSE on ``eps`` plus the
  variational bound term (``vb_terms_bpd``, in bits per dimension) for the variance, computed with the
  mean frozen so that it trains only ``v`` (Nichol & Dhariwal, Sec. 3.1);
- with a fixed variance (``learn_sigma=False``) the reverse step uses ``beta`` ("fixed large").
All schedule arithmetic is in float64; results are cast to the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def linear_beta_schedule(num_timesteps: int = 1000) -> torch.Tensor:
    """DDPM's linear betas from 1e-4 to 0.02 at 1000 steps, rescaled for other step counts (float64)."""
    scale = 1000 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), element-wise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of ``x`` in [-1, 1] quantised to 256 levels under a Gaussian (the DDPM decoder)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    """A diffusion process given by its ``betas``; ``timestep_map`` maps the process's step indices to the
    model's timestep input (the identity, or the kept steps of a respaced process)."""

    def __init__(self, betas: torch.Tensor, timestep_map: Sequence[int] | None = None) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D sequence of values in (0, 1]")
        self.num_timesteps = len(betas)
        self.timestep_map = torch.as_tensor(
            list(range(self.num_timesteps)) if timestep_map is None else timestep_map, dtype=torch.long
        )
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0): variance beta_tilde (log clipped at t=0, where it is 0) and mean coefficients.
        self.posterior_variance = betas * (1.0 - acp_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * acp_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - acp_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        # "Fixed large" variance for models without a learned sigma.
        self.fixed_log_variance = torch.log(torch.cat([self.posterior_variance[1:2], betas[1:]]))

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` shaped to broadcast against ``like`` (N, ...), in its dtype and device."""
        out = values[t.cpu()].to(device=like.device, dtype=like.dtype)
        return out.view(-1, *([1] * (like.dim() - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep values the model sees for process steps ``t``."""
        return self.timestep_map.to(t.device)[t]

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given noise."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x_start + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t)

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False
    ) -> dict[str, torch.Tensor]:
        """Mean, log variance and predicted x_0 of p(x_{t-1} | x_t) from the model's output at x_t.

        ``model_output`` has the channels of ``x_t`` (eps only, fixed variance) or twice as many (eps,
        then the variance interpolation ``v``).
        """
        channels = x_t.shape[1]
        if model_output.shape[1] == 2 * channels:
            eps, v = model_output.split(channels, dim=1)
            min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._at(torch.log(self.betas), t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        elif model_output.shape[1] == channels:
            eps = model_output
            log_variance = self._at(self.fixed_log_variance, t, x_t).expand_as(x_t)
        else:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels; expected {channels} (eps) "
                f"or {2 * channels} (eps and learned variance) for an input of {channels}"
            )
        pred_xstart = (
            self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _ = self.q_posterior(pred_xstart, x_t, t)
        return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The variational bound term L_t per sample in bits per dimension: KL to the true posterior for
        t > 0, the discretised decoder negative log-likelihood at t = 0."""
        true_mean, true_log_variance = self.q_posterior(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -mean_flat(
            discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
        ) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def p_sample(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} given the model's output (no noise added at t = 0)."""
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
