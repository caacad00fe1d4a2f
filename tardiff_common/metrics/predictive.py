"""Predictive score (Yoon et al., TimeGAN, NeurIPS 2019): train on synthetic, test on real,
for one-step-ahead prediction.

A GRU (``torch.nn.GRU``, ``num_layers`` = 2 layers, hidden ``hidden`` = 16; 0 = TimeGAN's
``max(C // 2, 4)``, which underfits in a few epochs) reads a series step by step and a linear
head predicts the next step (linear, not TimeGAN's sigmoid: the normalized scale is not
[0, 1]). Two targets:

* ``target="all"`` (default): from all channels x[:, :, :t+1] predict every channel at t+1,
  i.e. inputs x[:, :, 0:L-1] -> targets x[:, :, 1:L] ([B, C, L-1]). This is "predict the
  next-step values of the series" and works for univariate data.
* ``target="last_channel"``: the released TimeGAN code's variant, channels 0..C-2 at steps
  0..L-2 -> channel C-1 at steps 1..L-1 ([B, L-1]); needs C >= 2.

Training: the project's training loop (``training.loop.train_epochs``, as for the classifier and
the diffusion model) with an MAE (L1) loss on synthetic records x_s [N_syn, C, L], Adam (lr
5e-3), seeded shuffled batches, ``epochs`` passes raised until at least ``min_steps``
minibatches ran. Score: MAE of the
trained predictor on real records x_r [N_real, C, L], averaged over records, predicted steps
and predicted channels (lower is better; compare with the same predictor trained on real data
for a reference). Inputs are float32 on the model's normalized scale; at most ``max_records``
records of each set are used (seeded subsample). Deterministic under ``seed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..training.loop import train_epochs
from .discriminative import default_hidden, seeded_init, subsample, training_epochs

__all__ = ["PredictiveConfig", "GRUPredictor", "predictive_score", "TARGETS"]

TARGETS = ("all", "last_channel")


@dataclass(frozen=True)
class PredictiveConfig:
    """One-step-ahead GRU trained on synthetic data. ``hidden`` = 0 picks ``max(C // 2, 4)``."""

    target: str = "all"
    hidden: int = 16
    num_layers: int = 2
    epochs: int = 10
    min_steps: int = 200
    batch_size: int = 128
    lr: float = 5e-3
    max_records: int = 2000

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.hidden < 0 or self.num_layers < 1 or self.epochs < 0 or self.min_steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("hidden >= 0, num_layers >= 1, epochs >= 0, min_steps >= 0, batch_size >= 1 and lr > 0 "
                             "are required")
        if self.max_records < 1:
            raise ValueError("max_records must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


class GRUPredictor(nn.Module):
    """inputs [B, C_in, T] -> predictions [B, C_out, T] (one per input step)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, num_layers: int = 2):
        super().__init__()
        self.rnn = nn.GRU(in_channels, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x.transpose(1, 2))  # [B, T, hidden]
        return self.head(h).transpose(1, 2)


def _inputs_targets(x: torch.Tensor, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    if target == "all":
        return x[:, :, :-1], x[:, :, 1:]
    return x[:, :-1, :-1], x[:, -1:, 1:]


def predictive_score(
    real_x: np.ndarray,
    synthetic_x: np.ndarray,
    *,
    seed: int,
    config: PredictiveConfig = PredictiveConfig(),
) -> dict[str, float]:
    """{"predictive_mae": MAE on real_x of the next-step GRU trained on synthetic_x}.

    real_x [N_real, C, L], synthetic_x [N_syn, C, L], L >= 2 (C >= 2 for "last_channel").
    """
    real_x, synthetic_x = np.asarray(real_x), np.asarray(synthetic_x)
    if real_x.ndim != 3 or real_x.shape[1:] != synthetic_x.shape[1:] or not len(real_x) or not len(synthetic_x):
        raise ValueError(f"need non-empty [N, C, L] arrays of equal C, L; got {real_x.shape}, {synthetic_x.shape}")
    channels, length = real_x.shape[1:]
    if length < 2:
        raise ValueError("series need at least 2 steps")
    if config.target == "last_channel" and channels < 2:
        raise ValueError("target='last_channel' needs at least 2 channels")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 202]))
    xs = torch.from_numpy(subsample(synthetic_x, config.max_records, rng))
    xr = torch.from_numpy(subsample(real_x, config.max_records, rng))
    c_in, c_out = (channels, channels) if config.target == "all" else (channels - 1, 1)
    with seeded_init(seed):
        model = GRUPredictor(c_in, c_out, default_hidden(channels, config.hidden), config.num_layers)

    def batch_loss(net: nn.Module, xb: torch.Tensor, _yb: torch.Tensor, _generator) -> torch.Tensor:
        inputs, targets = _inputs_targets(xb, config.target)
        return (net(inputs) - targets).abs().mean()

    train_epochs(model, xs.numpy(), np.zeros(len(xs), dtype=np.int64), batch_loss,
                 lambda params: torch.optim.Adam(params, lr=config.lr),
                 epochs=training_epochs(config.epochs, config.min_steps, len(xs), config.batch_size),
                 batch_size=config.batch_size, seed=int(rng.integers(2**62)))
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(xr), 1024):
            inputs, targets = _inputs_targets(xr[start : start + 1024], config.target)
            err = (model(inputs) - targets).abs()
            total += float(err.double().sum())
            count += err.numel()
    return {"predictive_mae": total / count}
