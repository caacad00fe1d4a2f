"""DDPM noise schedules: beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s.

Three named schedules (``NoiseSchedule.from_name``):

* ``"linear"``      — beta_t linear from 1e-4 to 0.02 (Ho et al., 2020), rescaled by 1000 / T.
* ``"sqrt_linear"`` — beta_t = (linspace(sqrt(5e-4), sqrt(0.1), T))^2, the public TarDiff code.
* ``"cosine"``      — alpha_bar_t = cos^2(((t/T + s)/(1 + s)) pi/2) (Nichol & Dhariwal, 2021),
                      betas clipped at 0.999.

All tables are float64 tensors of shape [T]; index t = 0 is the first (least noisy) step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["NoiseSchedule", "SCHEDULES"]

SCHEDULES = ("linear", "sqrt_linear", "cosine")


def _betas(name: str, num_steps: int) -> torch.Tensor:
    if name == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), num_steps, dtype=torch.float64)
    if name == "sqrt_linear":
        return torch.linspace(math.sqrt(5e-4), math.sqrt(0.1), num_steps, dtype=torch.float64) ** 2
    if name == "cosine":
        s = 0.008
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = alpha_bar / alpha_bar[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")


@dataclass(frozen=True)
class NoiseSchedule:
    """Precomputed DDPM tables for ``num_steps`` steps (float64, shape [T])."""

    name: str
    betas: torch.Tensor

    @classmethod
    def from_name(cls, name: str = "sqrt_linear", num_steps: int = 200) -> NoiseSchedule:
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {num_steps}")
        return cls(name, _betas(name, num_steps))

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. x0, noise [B, ...], t [B]."""
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return abar.sqrt().view(shape) * x0 + (1 - abar).sqrt().view(shape) * noise
