"""The guidance vector: G = sum over the guidance set of grad_theta L(z_i; theta*).

G is a plain sum, so G over a union of disjoint sets is the sum of the G's of the parts; a
``GradientSum`` keeps the vector together with its record count so partial sums from several
sites can be added exactly and normalized once at the end: g = G / ||G||.

Parameter vectors are flat, in ``model.parameters()`` order restricted to trainable
parameters (the order of ``torch.nn.utils.parameters_to_vector``); shape [P], float64.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.classifier import per_example_loss

__all__ = ["GradientSum", "guidance_gradient_sum", "guidance_records", "trainable_parameters", "eval_mode"]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def eval_mode(model: nn.Module):
    """Dropout off (deterministic forward passes) and cuDNN off, then restore the previous mode.

    cuDNN's RNN kernels refuse backward in eval mode and have no double backward; the native
    kernels have both, so influence computations run without cuDNN (a no-op on the CPU).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.backends.cudnn.flags(enabled=False):
            yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class GradientSum:
    """``total`` [P] float64 = sum of per-example gradients over ``count`` records."""

    total: torch.Tensor
    count: int

    def __add__(self, other: GradientSum) -> GradientSum:
        if self.total.shape != other.total.shape:
            raise ValueError(f"gradient sums differ in size: {tuple(self.total.shape)} vs {tuple(other.total.shape)}")
        return GradientSum(self.total + other.total, self.count + other.count)

    def direction(self) -> torch.Tensor:
        """g = G / ||G||, float32 [P]. Raises ``ValueError`` for an empty or zero sum."""
        norm = float(self.total.norm())
        if self.count <= 0 or not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"cannot normalize a gradient sum over {self.count} records with norm {norm}")
        return (self.total / norm).float()

    def to_numpy(self) -> np.ndarray:
        return self.total.detach().cpu().numpy()

    @classmethod
    def zeros_like(cls, model: nn.Module) -> GradientSum:
        size = sum(p.numel() for p in trainable_parameters(model))
        return cls(torch.zeros(size, dtype=torch.float64), 0)

    @classmethod
    def sum(cls, parts: list[GradientSum]) -> GradientSum:
        if not parts:
            raise ValueError("no gradient sums to add")
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out


def guidance_records(
    model: nn.Module, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, target_class: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """(x [n, C, L] in the model's dtype, y [n] int64, the model's device): the records a gradient
    sum runs over, those of ``target_class`` only when it is given (still on the CPU)."""
    first = next(model.parameters())
    x = torch.as_tensor(x, dtype=first.dtype)
    y = torch.as_tensor(y, dtype=torch.long)
    if target_class is not None:
        keep = y == target_class
        x, y = x[keep], y[keep]
    return x, y, first.device


def guidance_gradient_sum(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    target_class: int | None = None,
    batch_size: int = 256,
) -> GradientSum:
    """G = sum_i grad_theta L(x_i, y_i; theta) over records (of ``target_class`` if given).

    x [N, C, L], y [N]. With ``target_class`` the sum runs over records of that class only
    (class-specific guidance, e.g. minority-only). Gradients are taken of the *summed*
    per-example loss, batch by batch, and accumulated in float64. The model's own device is
    used; dropout is disabled while summing.
    """
    x, y, device = guidance_records(model, x, y, target_class)
    params = trainable_parameters(model)
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=device)
    with eval_mode(model):
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            loss = per_example_loss(model(xb), yb).sum()
            grads = torch.autograd.grad(loss, params)
            total += torch.cat([g.reshape(-1) for g in grads]).double()
    return GradientSum(total.cpu(), int(len(y)))
