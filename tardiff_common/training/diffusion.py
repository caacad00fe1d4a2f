"""Epsilon-prediction training of the conditional U-Net.

Loss per record (Ho et al., 2020, with the paper code's L1 option):
    t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    L = | eps_phi(x_t, t, y~) - eps |  (mean over channels and time), y~ = y or the null label
    (classifier-free dropout with probability ``label_dropout``).

``train_diffusion`` runs ``epochs`` passes over (x, y) with AdamW, updating an EMA after every
step. All randomness (batch order, t, eps, label dropout) comes from one generator seeded by
``seed``, so a run is reproducible and FedAvg with one site equals centralized training.

DP hook: ``privacy`` (a ``DPTrainingSession``) runs the epochs as DP-SGD with Opacus (Poisson
batches, per-sample clipping and noise instead of ``grad_clip``; loss = sum of per-record losses
/ batch size, so an empty Poisson batch still steps). The EMA is updated from the DP weights
after every step (post-processing) and label dropout works as without DP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..diffusion.ema import EMA
from ..diffusion.schedule import NoiseSchedule
from ..models.unet1d import UNet1D
from .loop import train_epochs

if TYPE_CHECKING:  # Opacus is imported only when DP is used
    from ..privacy.dp_sgd import DPTrainingSession

__all__ = ["DiffusionTrainConfig", "diffusion_loss", "train_diffusion"]


@dataclass(frozen=True)
class DiffusionTrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "l1"
    ema_decay: float = 0.995
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {self.loss!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs >= 0, batch_size >= 1 and lr > 0 are required")

    def to_dict(self) -> dict:
        return asdict(self)


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: torch.Generator,
    loss: str = "l1",
    reduction: str = "mean",
) -> torch.Tensor:
    """Epsilon-prediction loss for a batch x0 [B, C, L], y [B]; [B] if reduction="none"."""
    b = x0.shape[0]
    device = x0.device
    t = torch.randint(0, schedule.num_steps, (b,), generator=generator).to(device)
    eps = torch.randn(x0.shape, generator=generator).to(device)
    core = getattr(model, "_module", model)  # Opacus' GradSampleModule wraps the U-Net as ``_module``
    y_in = core.drop_labels(y, generator) if isinstance(core, UNet1D) else y
    pred = model(schedule.add_noise(x0, eps, t), t, y_in)
    err = (pred - eps).abs() if loss == "l1" else (pred - eps) ** 2
    per_record = err.flatten(1).mean(dim=1)
    return per_record.mean() if reduction == "mean" else per_record


def train_diffusion(
    model: nn.Module,
    schedule: NoiseSchedule,
    x: np.ndarray,
    y: np.ndarray,
    config: DiffusionTrainConfig,
    *,
    seed: int,
    ema: EMA | None = None,
    proximal_mu: float = 0.0,
    progress: bool = False,
    desc: str = "diffusion",
    privacy: DPTrainingSession | None = None,
) -> dict:
    """Train ``model`` in place on x [N, C, L], y [N] with ``training.loop.train_epochs`` (AdamW, the
    EMA updated after every step); returns {"loss": mean last-epoch loss, "steps"}.

    ``proximal_mu`` > 0 adds FedProx's (mu/2)||w - w_start||^2 to every step's loss. ``privacy``:
    train with DP-SGD (``tardiff_common.privacy.dp_sgd``); its ``entries`` hold the accountant history.
    """

    def batch_loss(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if privacy is None:
            return diffusion_loss(net, schedule, xb, yb, generator=generator, loss=config.loss)
        per_record = diffusion_loss(net, schedule, xb, yb, generator=generator, loss=config.loss, reduction="none")
        return per_record.sum() / max(len(per_record), 1)

    def make_optimizer(params):
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    return train_epochs(model, x, y, batch_loss, make_optimizer, epochs=config.epochs, batch_size=config.batch_size,
                        seed=seed, grad_clip=config.grad_clip, proximal_mu=proximal_mu, privacy=privacy,
                        after_step=ema.update if ema is not None else None, progress=progress, desc=desc)
