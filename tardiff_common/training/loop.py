"""Pieces both training loops (classifier, diffusion) share: the seeded loader, the choice
between plain and Opacus-private training objects, and the FedProx / DP-SGD exclusion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from ..privacy.dp_sgd import DPTrainingSession

__all__ = ["seeded_loader", "training_objects", "check_proximal_with_privacy"]


def seeded_loader(x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator) -> torch.utils.data.DataLoader:
    """Shuffled mini-batches (x [B, C, L] float32, y [B] int64) drawn with ``generator``."""
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
    return torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                       generator=generator)


@contextmanager
def training_objects(model: nn.Module, make_optimizer: Callable, loader: torch.utils.data.DataLoader,
                     privacy: DPTrainingSession | None) -> Iterator[tuple]:
    """(network to call, optimizer, batches): the plain objects, or their Opacus-private versions
    (Poisson-sampled batches, per-sample clipping and noise) for the length of the block."""
    if privacy is None:
        yield model, make_optimizer(model.parameters()), loader
        return
    with privacy.private(model, make_optimizer, loader) as private:
        yield private


def check_proximal_with_privacy(privacy: DPTrainingSession | None, proximal_mu: float) -> None:
    if privacy is not None and proximal_mu > 0:
        raise ValueError("FedProx's proximal term is not supported with DP-SGD (Opacus would drop its gradient)")
