"""Reverse-process samplers: DDPM ancestral and DDIM(eta).

Each sampler exposes one contract, in the spirit of diffusers' ``step()``:

    moments = sampler.moments(eps, i, x_t)      # i indexes sampler.timesteps
    x_prev  = moments.mean + moments.std * noise

``ReverseMoments`` carries the Gaussian p(x_{t_prev} | x_t) = N(mean, variance · I), the
predicted clean sample x0_hat and d mean / d x0_hat (``x0_coef``: the mean is linear in x0_hat
with the noise estimate held fixed), so a guidance term can shift the mean (paper form), blend
the drawn sample (public-code form) or correct x0_hat and redo the update from it
(manifold-preserving form) without the sampler knowing about it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import NoiseSchedule

__all__ = ["ReverseMoments", "DDPMSampler", "DDIMSampler", "build_sampler", "SAMPLERS"]

SAMPLERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class ReverseMoments:
    """mean [B, C, L], variance (scalar Sigma_t of this step), x0_hat [B, C, L], x0_coef =
    d mean / d x0_hat at fixed noise estimate (DDIM sqrt(abar_prev), DDPM the posterior's c0),
    x0_clip the range x0_hat is clipped to (None = none)."""

    mean: torch.Tensor
    variance: float
    x0_hat: torch.Tensor
    x0_coef: float = 0.0
    x0_clip: float | None = None

    @property
    def std(self) -> float:
        return self.variance**0.5


def _x0_hat(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float, clip: float | None) -> torch.Tensor:
    # (1) x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)          [DDPM eq. 15]
    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t**0.5
    return x0.clamp(-clip, clip) if clip is not None else x0


class DDPMSampler:
    """Ancestral sampling over all T steps with the posterior variance beta~_t (Ho et al., 2020)."""

    def __init__(self, schedule: NoiseSchedule, *, clip_x0: float | None = 1.0):
        self.schedule = schedule
        self.clip_x0 = clip_x0
        self.timesteps = list(range(schedule.num_steps - 1, -1, -1))
        self._abar = schedule.alphas_cumprod.tolist()
        self._beta = schedule.betas.tolist()

    def step_variance(self, i: int) -> float:
        """(3) posterior variance beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t); zero at t = 0."""
        t = self.timesteps[i]
        return self._beta[t] * (1 - self._abar[t - 1]) / (1 - self._abar[t]) if t > 0 else 0.0

    def moments(self, eps: torch.Tensor, i: int, x_t: torch.Tensor) -> ReverseMoments:
        t = self.timesteps[i]
        abar_t = self._abar[t]
        abar_prev = self._abar[t - 1] if t > 0 else 1.0
        beta_t = self._beta[t]
        x0 = _x0_hat(x_t, eps, abar_t, self.clip_x0)
        # (2) posterior mean mu~_t = c0 x0_hat + ct x_t                        [DDPM eq. 7]
        c0 = beta_t * abar_prev**0.5 / (1 - abar_t)
        ct = (1 - abar_prev) * (1 - beta_t) ** 0.5 / (1 - abar_t)
        return ReverseMoments(mean=c0 * x0 + ct * x_t, variance=self.step_variance(i), x0_hat=x0, x0_coef=c0,
                              x0_clip=self.clip_x0)


class DDIMSampler:
    """DDIM on ``num_inference_steps`` evenly spaced timesteps with stochasticity ``eta``
    (Song et al., 2021): eta = 0 is deterministic, eta = 1 matches DDPM's variance."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        num_inference_steps: int = 50,
        eta: float = 1.0,
        clip_x0: float | None = 1.0,
    ):
        if not 1 <= num_inference_steps <= schedule.num_steps:
            raise ValueError(f"num_inference_steps must be in 1..{schedule.num_steps}, got {num_inference_steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule = schedule
        self.eta = eta
        self.clip_x0 = clip_x0
        # "trailing" spacing: start at t = T - 1 so the first step sees pure noise
        stride = schedule.num_steps / num_inference_steps
        self.timesteps = sorted(
            {int(round(schedule.num_steps - k * stride)) - 1 for k in range(num_inference_steps)}, reverse=True
        )
        self._abar = schedule.alphas_cumprod.tolist()

    def _abar_prev(self, i: int) -> float:
        return self._abar[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else 1.0

    def step_variance(self, i: int) -> float:
        """(2) sigma_t^2 = eta^2 (1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev)   [DDIM eq. 16];
        zero on the last step (abar_prev = 1)."""
        abar_t, abar_prev = self._abar[self.timesteps[i]], self._abar_prev(i)
        return self.eta**2 * (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)

    def moments(self, eps: torch.Tensor, i: int, x_t: torch.Tensor) -> ReverseMoments:
        t = self.timesteps[i]
        abar_t = self._abar[t]
        abar_prev = self._abar_prev(i)
        x0 = _x0_hat(x_t, eps, abar_t, self.clip_x0)
        # (1b) the noise direction consistent with the (possibly clipped) x0_hat
        eps = (x_t - abar_t**0.5 * x0) / (1 - abar_t) ** 0.5
        variance = self.step_variance(i)
        # (3) mean = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps       [DDIM eq. 12]
        mean = abar_prev**0.5 * x0 + max(1 - abar_prev - variance, 0.0) ** 0.5 * eps
        return ReverseMoments(mean=mean, variance=variance, x0_hat=x0, x0_coef=abar_prev**0.5, x0_clip=self.clip_x0)


def build_sampler(
    name: str,
    schedule: NoiseSchedule,
    *,
    num_inference_steps: int = 50,
    eta: float = 1.0,
    clip_x0: float | None = 1.0,
) -> DDPMSampler | DDIMSampler:
    """``"ddpm"`` (all T steps) or ``"ddim"`` (``num_inference_steps``, ``eta``)."""
    if name == "ddpm":
        return DDPMSampler(schedule, clip_x0=clip_x0)
    if name == "ddim":
        return DDIMSampler(schedule, num_inference_steps=num_inference_steps, eta=eta, clip_x0=clip_x0)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
