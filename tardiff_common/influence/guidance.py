"""Influence-guided reverse step (TarDiff).

Given the sampler's Gaussian N(mu_phi(x_t, t, y), Sigma_t) and x0_hat(x_t), one guided step is

paper form  (``form="paper"``, default; Deng et al. 2025, Sec. 3.2):
    (1) grad = grad_x I(x0_hat)                     influence gradient at the predicted clean sample
    (2) mu'  = mu_phi + s * Sigma_t * grad          shift the mean up the influence
    (3) x_{t-1} = mu' + sqrt(Sigma_t) * z           z ~ N(0, I), the same z as unguided sampling

public-code form (``form="code"``; microsoft/TimeCraft, TarDiff/):
    (1) grad as above
    (2) x~   = mu_phi + sqrt(Sigma_t) * z           the unguided DDIM/DDPM sample
    (3) x_{t-1} = (1 - s) * x~ + s * grad

Like the public code we differentiate I with respect to x0_hat, not through the U-Net to x_t
(d x0_hat / d x_t is taken as the identity), so a guided step costs one U-Net forward plus the
influence gradient. With s = 0 both forms return exactly the unguided sample: the noise z is
drawn by the caller whether or not guidance is on, and 0 * grad adds exact zeros.

``GuidanceConfig.method`` picks the influence gradient (see ``influence_gradient``):
"jvp" / "central_difference" (fast), "double_backprop" (reference), "batch_normalized"
(the public code's batch-coupled objective).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..diffusion.samplers import ReverseMoments
from .influence_gradient import get_influence_grad, influence_grad_central_difference

__all__ = ["GuidanceConfig", "InfluenceGuidance", "GUIDANCE_FORMS"]

GUIDANCE_FORMS = ("paper", "code")


@dataclass(frozen=True)
class GuidanceConfig:
    """scale s; form "paper" | "code"; method of the influence gradient; target_class for
    class-specific guidance (None = all guidance records); guided_fraction of the reverse
    steps that are guided (the last, least noisy ones; 1.0 = every step)."""

    scale: float = 100.0
    form: str = "paper"
    method: str = "jvp"
    target_class: int | None = None
    guided_fraction: float = 1.0
    fd_eps: float = 1e-2

    def __post_init__(self) -> None:
        if self.form not in GUIDANCE_FORMS:
            raise ValueError(f"unknown guidance form {self.form!r}; choose one of {GUIDANCE_FORMS}")
        get_influence_grad(self.method)
        if not 0.0 <= self.guided_fraction <= 1.0:
            raise ValueError(f"guided_fraction must be in [0, 1], got {self.guided_fraction}")
        if self.target_class not in (None, 0, 1):
            raise ValueError(f"target_class must be None, 0 or 1, got {self.target_class}")

    @classmethod
    def public_code(cls, **overrides) -> GuidanceConfig:
        """The public code's settings: (1 - s) x + s grad with s = 1e-5 and its batch objective."""
        return cls(**{"scale": 1e-5, "form": "code", "method": "batch_normalized", **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class InfluenceGuidance:
    """Applies one guided reverse step. ``direction`` is g = G / ||G|| ([P], classifier order)."""

    def __init__(self, classifier: nn.Module, direction: torch.Tensor, config: GuidanceConfig):
        self.classifier = classifier
        self.config = config
        device = next(classifier.parameters()).device
        self.direction = direction.to(device=device, dtype=torch.float32)
        self._grad_fn = get_influence_grad(config.method)

    def influence_grad(self, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """grad_x I at x0_hat [B, C, L] for labels y [B]."""
        if self._grad_fn is influence_grad_central_difference:
            return self._grad_fn(self.classifier, x0_hat, y, self.direction, eps=self.config.fd_eps)
        return self._grad_fn(self.classifier, x0_hat, y, self.direction)

    def is_guided(self, i: int, num_steps: int) -> bool:
        """Step i (0 = noisiest) is guided if it lies in the last ``guided_fraction`` of steps."""
        return i >= num_steps - round(self.config.guided_fraction * num_steps)

    def step(self, moments: ReverseMoments, noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_{t-1} from the sampler's moments, the step's noise z [B, C, L] and labels y [B]."""
        s = self.config.scale
        grad = self.influence_grad(moments.x0_hat, y)  # (1)
        if self.config.form == "paper":
            mean = moments.mean + (s * moments.variance) * grad  # (2)
            return mean + moments.std * noise  # (3)
        unguided = moments.mean + moments.std * noise  # (2)
        return (1.0 - s) * unguided + s * grad  # (3)
