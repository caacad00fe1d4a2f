"""FedProx's proximal term (Li et al., 2020): (mu / 2) * ||w - w_global||^2 over trainable weights."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProximalTerm"]


class ProximalTerm:
    """Snapshot the weights a round starts from; ``__call__(model)`` returns the penalty (0 if mu = 0)."""

    def __init__(self, model: nn.Module, mu: float):
        if mu < 0:
            raise ValueError(f"proximal mu must be >= 0, got {mu}")
        self.mu = mu
        self.anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad] if mu > 0 else []

    def __call__(self, model: nn.Module) -> torch.Tensor | float:
        if self.mu == 0:
            return 0.0
        live = [p for p in model.parameters() if p.requires_grad]
        return 0.5 * self.mu * sum(((p - a) ** 2).sum() for p, a in zip(live, self.anchor))
