"""Training and prediction for the downstream classifier f_theta.

Objective: mean over a batch of BCEWithLogits(f_theta(x_i), y_i), optionally with the
positive class weighted by n_neg / n_pos (``class_weighting="balanced"``), Adam (lr 1e-3 as
in the paper code). All randomness comes from a generator seeded by ``seed``.

DP hook: ``privacy`` (a ``DPTrainingSession``) runs the same epochs as DP-SGD with Opacus
(Poisson-sampled batches, per-sample clipping and noise instead of ``grad_clip``); without it
the training is exactly the plain one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .loop import BatchLoss, train_epochs

if TYPE_CHECKING:  # Opacus is imported only when DP is used
    from ..privacy.dp_sgd import DPTrainingSession

__all__ = ["ClassifierTrainConfig", "classifier_batch_loss", "train_classifier", "predict_proba", "positive_class_weight"]


@dataclass(frozen=True)
class ClassifierTrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    class_weighting: str = "none"
    grad_clip: float | None = 5.0

    def __post_init__(self) -> None:
        if self.class_weighting not in ("none", "balanced"):
            raise ValueError(f"class_weighting must be 'none' or 'balanced', got {self.class_weighting!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs >= 0, batch_size >= 1 and lr > 0 are required")

    def to_dict(self) -> dict:
        return asdict(self)


def positive_class_weight(y: np.ndarray, class_weighting: str) -> float:
    """n_neg / n_pos for "balanced" (1.0 if a class is absent), else 1.0."""
    if class_weighting != "balanced":
        return 1.0
    n_pos = int(np.sum(y == 1))
    n_neg = int(np.sum(y == 0))
    return n_neg / n_pos if n_pos and n_neg else 1.0


def classifier_batch_loss(pos_weight: float, device: torch.device) -> BatchLoss:
    """The classifier's per-batch loss for ``train_epochs``: mean BCEWithLogits(f_theta(x_B), y_B)
    with the positive class weighted by ``pos_weight``."""
    pw = torch.tensor(pos_weight, device=device)

    def batch_loss(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor, _generator) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(net(xb), yb.float(), pos_weight=pw)

    return batch_loss


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: ClassifierTrainConfig,
    *,
    seed: int,
    pos_weight: float | None = None,
    proximal_mu: float = 0.0,
    progress: bool = False,
    desc: str = "classifier",
    privacy: DPTrainingSession | None = None,
    after_epoch: Callable[[int], bool] | None = None,
) -> dict:
    """Train ``model`` in place on x [N, C, L], y [N] with ``training.loop.train_epochs`` (loss:
    BCEWithLogits with ``pos_weight``; Adam). Returns {"loss": last-epoch mean, "steps"}.

    ``pos_weight`` overrides the weight derived from ``y`` (a federation passes the global one);
    ``proximal_mu`` > 0 adds FedProx's (mu/2)||w - w_start||^2. ``privacy``: train with DP-SGD
    (see ``tardiff_common.privacy.dp_sgd``); its ``entries`` hold the call's accountant history.
    ``after_epoch(e)`` returning True stops after epoch e (early stopping). The model ends in eval mode.
    """
    if pos_weight is None:
        pos_weight = positive_class_weight(np.asarray(y), config.class_weighting)
    batch_loss = classifier_batch_loss(pos_weight, next(model.parameters()).device)

    def make_optimizer(params):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    stats = train_epochs(model, x, y, batch_loss, make_optimizer, epochs=config.epochs, batch_size=config.batch_size,
                         seed=seed, grad_clip=config.grad_clip, proximal_mu=proximal_mu, privacy=privacy,
                         after_epoch=after_epoch, progress=progress, desc=desc)
    model.eval()
    return stats


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """P(y = 1 | x) for x [N, C, L] -> [N] float64, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    xt = torch.as_tensor(x, dtype=torch.float32)
    for start in range(0, len(xt), batch_size):
        out.append(torch.sigmoid(model(xt[start : start + batch_size].to(device))).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)
