"""Training and prediction for the downstream classifier f_theta.

Objective: mean over a batch of BCEWithLogits(f_theta(x_i), y_i), optionally with the
positive class weighted by n_neg / n_pos (``class_weighting="balanced"``), Adam (lr 1e-3 as
in the paper code). All randomness comes from a generator seeded by ``seed``.

DP hook: ``privacy`` (a ``DPTrainingSession``) runs the same epochs as DP-SGD with Opacus
(Poisson-sampled batches, per-sample clipping and noise instead of ``grad_clip``); without it
the training is exactly the plain one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .loop import check_proximal_with_privacy, seeded_loader, training_objects
from .proximal import ProximalTerm

if TYPE_CHECKING:  # Opacus is imported only when DP is used
    from ..privacy.dp_sgd import DPTrainingSession

__all__ = ["ClassifierTrainConfig", "train_classifier", "predict_proba", "positive_class_weight"]


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
) -> dict:
    """Train ``model`` in place on x [N, C, L], y [N]. Returns {"loss": last-epoch mean, "steps"}.

    ``pos_weight`` overrides the weight derived from ``y`` (a federation passes the global one);
    ``proximal_mu`` > 0 adds FedProx's (mu/2)||w - w_start||^2. ``privacy``: train with DP-SGD
    (see ``tardiff_common.privacy.dp_sgd``); its ``entries`` hold the call's accountant history.
    """
    device = next(model.parameters()).device
    generator = privacy.generator(seed) if privacy is not None else torch.Generator().manual_seed(seed)
    if pos_weight is None:
        pos_weight = positive_class_weight(np.asarray(y), config.class_weighting)
    pw = torch.tensor(pos_weight, device=device)
    loader = seeded_loader(x, y, config.batch_size, generator)

    def make_optimizer(params):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    check_proximal_with_privacy(privacy, proximal_mu)
    model.train()
    steps, losses = 0, []
    with training_objects(model, make_optimizer, loader, privacy) as (net, optimizer, batches):
        proximal = ProximalTerm(model, proximal_mu)
        for _ in tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False):
            losses = []
            for xb, yb in batches:
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = F.binary_cross_entropy_with_logits(net(xb), yb.float(), pos_weight=pw)
                if privacy is not None:  # a Poisson batch may be empty: it still steps (noise only)
                    loss.backward()
                else:
                    (loss + proximal(model)).backward()
                    if config.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                steps += 1
                if len(yb):
                    losses.append(float(loss.detach()))
    model.eval()
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": steps}


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
