"""DP release of a site's guidance gradient sum (the Gaussian mechanism on clipped gradients).

For the guidance records z_i = (x_i, y_i), i = 1..n (of ``target_class`` if set):

    g_i   = grad_theta L(x_i, y_i; theta)                  per-example gradient, [P]
    g~_i  = g_i * min(1, C / (||g_i||_2 + 1e-6))            clipped: ||g~_i|| <= C  (Opacus' rule)
    G~_k  = sum_i g~_i + N(0, sigma^2 C^2 I_P)              released, [P] float64

Adding or removing one record changes sum_i g~_i by at most C in L2, so G~_k is the Gaussian
mechanism with noise multiplier sigma: one Opacus accountant history entry (sigma, q = 1, 1 step)
(see ``accounting``). With sigma = 0 and C = inf it is exactly ``guidance_gradient_sum``.

Per-example gradients come from Opacus' ``GradSampleModule`` (hooks; ``loss_reduction="sum"``),
computed deterministically (Opacus' hooks need training mode, so the model runs in training
mode with every dropout layer switched off, which is the eval-mode function for these models)
on Opacus-ready layers (``compat``: nn.GRU runs as DPGRU). Parameter order is ``model.parameters()`` (trainable ones), as in
``GradientSum``. The count n_k is returned exactly (see docs/PRIVACY.md for why).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn

from ..influence.gradient_sum import GradientSum, guidance_records, trainable_parameters
from ..models.classifier import per_example_loss
from .compat import opacus_ready

__all__ = ["ClippedSum", "per_example_gradients", "clip_rows", "clipped_gradient_sum", "dp_gradient_sum", "gaussian_noise"]


@dataclass(frozen=True)
class ClippedSum:
    """sum of clipped per-example gradients [P] float64 over ``count`` records, plus diagnostics."""

    total: torch.Tensor
    count: int
    clipped_fraction: float
    max_norm: float


@contextmanager
def deterministic_training_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Training mode (Opacus captures activations only then) with all dropout off; restored after."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    try:
        with torch.backends.cudnn.flags(enabled=False):
            yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          order: list[str] | None = None) -> torch.Tensor:
    """[B, P] float32: row i = grad_theta L(x_i, y_i), trainable parameters flattened in ``order``
    (parameter names; default: the model's own order).

    ``model`` must already be Opacus-ready (see ``compat.opacus_ready``: DPGRU registers its
    parameters in another order than nn.GRU, hence ``order``); its ``.grad`` fields are kept.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    order = list(named) if order is None else order
    saved = {n: p.grad for n, p in named.items()}
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    try:
        for p in named.values():
            p.grad = None
        loss = per_example_loss(gsm(x), y).sum()
        with warnings.catch_warnings():  # inputs need no gradient: torch notes the hook fires on outputs
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        rows = torch.cat([named[n].grad_sample.reshape(len(y), -1) for n in order], dim=1)
    finally:
        gsm._close()  # removes the hooks and the grad_sample attributes
        for n, p in named.items():
            p.grad = saved[n]
    return rows


def clip_rows(rows: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [B, P] each scaled by min(1, C / (||row|| + 1e-6)), the factors [B]); C = inf: unchanged."""
    norms = rows.norm(dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0) if math.isfinite(clip) else torch.ones_like(norms)
    return rows * factor[:, None], factor


def clipped_gradient_sum(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    clip: float,
    target_class: int | None = None,
    batch_size: int = 256,
) -> ClippedSum:
    """sum_i g_i * min(1, C / (||g_i|| + 1e-6)) over the records (of ``target_class``); C = inf: no clipping."""
    x, y, device = guidance_records(model, x, y, target_class)
    size = sum(p.numel() for p in trainable_parameters(model))
    order = [n for n, p in model.named_parameters() if p.requires_grad]  # GradientSum's order
    total = torch.zeros(size, dtype=torch.float64, device=device)
    clipped, max_norm = 0, 0.0
    with opacus_ready(model), deterministic_training_mode(model):
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            rows = per_example_gradients(model, xb, yb, order).double()
            clipped_rows, factor = clip_rows(rows, clip)
            total += clipped_rows.sum(dim=0)
            clipped += int((factor < 1.0).sum())
            max_norm = max(max_norm, float(rows.norm(dim=1).max()))
    return ClippedSum(total.cpu(), int(len(y)), clipped / max(len(y), 1), max_norm)


def gaussian_noise(size: int, *, std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std^2) per coordinate, [size] float64, from ``generator`` (CPU)."""
    if std == 0:
        return torch.zeros(size, dtype=torch.float64)
    return torch.randn(size, generator=generator, dtype=torch.float64) * std


def dp_gradient_sum(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator,
    target_class: int | None = None,
    batch_size: int = 256,
) -> tuple[GradientSum, ClippedSum]:
    """(G~_k with the exact count n_k, the clipped sum before noise) -- see the module doc."""
    if noise_multiplier > 0 and not math.isfinite(clip):
        raise ValueError("DP noise needs a finite clip C (the noise std is sigma * C)")
    clipped = clipped_gradient_sum(model, x, y, clip=clip, target_class=target_class, batch_size=batch_size)
    std = noise_multiplier * clip if noise_multiplier > 0 else 0.0
    noisy = clipped.total + gaussian_noise(clipped.total.numel(), std=std, generator=generator)
    return GradientSum(noisy, clipped.count), clipped
