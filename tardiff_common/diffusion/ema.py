"""Exponential moving average of a model's parameters: ema <- decay * ema + (1 - decay) * theta."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Keeps ``shadow``, a frozen copy of ``model`` whose parameters trail the live ones.

    ``update()`` after every optimizer step; ``shadow`` is what samples. Buffers are copied,
    not averaged. ``load_shadow`` installs weights from elsewhere (e.g. a federated average).
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, *, shadow: nn.Module | None = None):
        """``shadow``: a module of ``model``'s architecture to trail it from (e.g. one built with the
        global EMA weights), instead of a deep copy of ``model``."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = (copy.deepcopy(model) if shadow is None else shadow).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = [p.detach() for p in model.parameters()]
        shadow = list(self.shadow.parameters())
        torch._foreach_lerp_(shadow, live, 1.0 - self.decay)
        for sb, b in zip(self.shadow.buffers(), model.buffers()):
            sb.copy_(b)

    def load_shadow(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state_dict)
