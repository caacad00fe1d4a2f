"""The one training loop of the project: the classifier f_theta and the diffusion model eps_phi
(``training.classifier``, ``training.diffusion``) differ only in their per-batch loss.

``train_epochs`` runs ``epochs`` passes of mini-batch descent over (x [N, C, L], y [N]):

    for each batch B (shuffled with a generator seeded by ``seed``):
        l_B = batch_loss(net, x_B, y_B, generator)
        plain:  backward(l_B + (mu/2)||w - w_start||^2), clip ||grad|| to ``grad_clip``, step
        DP-SGD: backward(l_B) through Opacus (Poisson batches, per-sample clipping, noise), step
        after_step(model)                       (e.g. an EMA update)
    after_epoch(e) -> True stops after epoch e  (e.g. early stopping)

All randomness (batch order, and whatever ``batch_loss`` draws from the generator) comes from one
generator, so a call is reproducible and FedAvg with one site equals centralized training.
Returns {"loss": mean of the last epoch's non-empty batch losses, "steps": optimizer steps}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .proximal import ProximalTerm

if TYPE_CHECKING:
    from ..privacy.dp_sgd import DPTrainingSession

__all__ = ["BatchLoss", "SeededBatches", "seeded_loader", "training_objects", "check_proximal_with_privacy",
           "train_epochs"]

# (network to call, x batch [B, C, L] on the model's device, y batch [B], generator) -> scalar loss
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def seeded_loader(x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator) -> torch.utils.data.DataLoader:
    """Shuffled mini-batches (x [B, C, L] float32, y [B] int64) drawn with ``generator``."""
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
    return torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                       generator=generator)


class SeededBatches:
    """``seeded_loader``'s batches, and its draws from ``generator``, without its per-record
    indexing and collation (which cost more than a small classifier's step): one pass is

        (one int64 draw: the loader iterator's base seed)
        perm = randperm(N)                       the epoch's order
        x[perm[i:i+B]], y[perm[i:i+B]]           for i = 0, B, 2B, ...
        (one more randperm(N): the sampler's empty tail, drawn when it is exhausted -- before the
         last batch when N % B != 0, after it otherwise)

    so a training run draws the very same batches and leaves ``generator`` in the same state
    (tested against the DataLoader). DP-SGD keeps the DataLoader: Opacus replaces it by Poisson
    batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator):
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.long)
        self.batch_size = min(batch_size, len(self.y))
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size) if len(self.y) else 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size, g = len(self.y), self.batch_size, self.generator
        torch.empty((), dtype=torch.int64).random_(generator=g)
        if n == 0:
            return
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, size):
            if start + size > n:
                torch.randperm(n, generator=g)
            idx = perm[start:start + size]
            yield self.x[idx], self.y[idx]
        if n % size == 0:
            torch.randperm(n, generator=g)


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


def train_epochs(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    batch_loss: BatchLoss,
    make_optimizer: Callable,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    grad_clip: float | None = None,
    proximal_mu: float = 0.0,
    privacy: DPTrainingSession | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    after_epoch: Callable[[int], bool] | None = None,
    progress: bool = False,
    desc: str = "training",
) -> dict:
    """Train ``model`` in place (see the module docstring); ``make_optimizer(params)`` builds the
    optimizer. ``privacy``: DP-SGD (``tardiff_common.privacy.dp_sgd``), no ``grad_clip`` or
    proximal term then (its clipping replaces them); its ``entries`` hold the accountant history."""
    device = next(model.parameters()).device
    generator = privacy.generator(seed) if privacy is not None else torch.Generator().manual_seed(seed)
    loader = seeded_loader(x, y, batch_size, generator) if privacy is not None else SeededBatches(x, y, batch_size,
                                                                                                generator)
    check_proximal_with_privacy(privacy, proximal_mu)
    proximal = ProximalTerm(model, proximal_mu)
    model.train()
    steps, losses = 0, []
    with training_objects(model, make_optimizer, loader, privacy) as (net, optimizer, batches):
        for epoch in tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False):
            losses = []
            for xb, yb in batches:
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = batch_loss(net, xb, yb, generator)
                if privacy is not None:  # a Poisson batch may be empty: it still steps (noise only)
                    loss.backward()
                else:
                    (loss + proximal(model)).backward()
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                if after_step is not None:
                    after_step(model)
                steps += 1
                if len(yb):
                    losses.append(float(loss.detach()))
            if after_epoch is not None and after_epoch(epoch):
                break
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": steps}
