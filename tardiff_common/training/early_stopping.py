"""Classifier training that stops early on a validation split's loss and keeps the best epoch.

The loop is the one training loop, ``training.loop.train_epochs``, with the loss of
``training.classifier.train_classifier`` (BCEWithLogits with the positive-class weight, Adam,
gradient clipping; Adam's multi-tensor update, so its first k epochs are
``train_classifier(epochs=k)``'s to float rounding), plus, after every epoch e = 1, 2, ...:

    V_e = mean_i BCEWithLogits(f_theta_e(x_i), y_i; pos_weight)    over the validation split
    e*  = argmin_e V_e  (the first minimum)

Training stops once ``patience`` epochs in a row have not lowered the best V by more than
``min_delta`` (or after ``config.epochs``), and the model is left with the weights of epoch e*.
The validation split must be one that is never reported (the tuning split in the pipeline),
so the stopping point is a model choice like any other, made without the test split.

Arrays: x [N, C, L] float32, y [N] int64 (0/1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .classifier import ClassifierTrainConfig, classifier_batch_loss, positive_class_weight
from .loop import train_epochs

__all__ = ["EarlyStopping", "train_early_stopped", "validation_loss"]


@dataclass(frozen=True)
class EarlyStopping:
    """What ``train_early_stopped`` did: the kept epoch e* (1-based; 0 = the initial weights
    were never beaten, impossible after one epoch unless V is NaN), the epochs run, and V_e."""

    best_epoch: int
    epochs_run: int
    val_losses: tuple[float, ...]


@torch.no_grad()
def validation_loss(model: nn.Module, x: np.ndarray, y: np.ndarray, *, pos_weight: float = 1.0,
                    batch_size: int = 1024) -> float:
    """Mean BCEWithLogits of ``model`` (in eval mode) over x [N, C, L], y [N]."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    pw = torch.tensor(pos_weight, device=device)
    total = 0.0
    for start in range(0, len(yt), batch_size):
        logits = model(xt[start : start + batch_size].to(device))
        total += float(F.binary_cross_entropy_with_logits(logits, yt[start : start + batch_size].to(device),
                                                          pos_weight=pw, reduction="sum"))
    model.train(was_training)
    return total / max(len(yt), 1)


def train_early_stopped(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    config: ClassifierTrainConfig,
    *,
    seed: int,
    patience: int,
    min_delta: float = 0.0,
) -> EarlyStopping:
    """Train ``model`` in place for at most ``config.epochs`` epochs, stopping after ``patience``
    epochs without a new best validation loss; the model ends with its best epoch's weights."""
    (x, y), (x_val, y_val) = train, validation
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if len(y_val) == 0:
        raise ValueError("early stopping needs a non-empty validation split")
    pos_weight = positive_class_weight(np.asarray(y), config.class_weighting)
    best = {"loss": float("inf"), "epoch": 0, "state": copy.deepcopy(model.state_dict()), "since": 0}
    losses: list[float] = []

    def make_optimizer(params):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)

    def after_epoch(epoch: int) -> bool:
        losses.append(validation_loss(model, x_val, y_val, pos_weight=pos_weight))
        if losses[-1] < best["loss"] - min_delta:
            best.update(loss=losses[-1], epoch=epoch, state=copy.deepcopy(model.state_dict()), since=0)
            return False
        best["since"] += 1
        return best["since"] >= patience

    batch_loss = classifier_batch_loss(pos_weight, next(model.parameters()).device)
    train_epochs(model, x, y, batch_loss, make_optimizer, epochs=config.epochs, batch_size=config.batch_size,
                 seed=seed, grad_clip=config.grad_clip, after_epoch=after_epoch)
    model.load_state_dict(best["state"])
    model.eval()
    return EarlyStopping(best_epoch=best["epoch"], epochs_run=len(losses), val_losses=tuple(losses))
