"""Discriminative score (Yoon et al., TimeGAN, NeurIPS 2019): can a post-hoc classifier tell
synthetic series from real ones?

Protocol (``discriminative_score``):

1. Balance: n = min(N_real, N_syn, ``max_records``) records are drawn (seeded, without
   replacement) from each of real x_r [N_real, C, L] and synthetic x_s [N_syn, C, L]
   (float32, the model's normalized scale).
2. Split each set 80/20 (``train_fraction``) into train / held-out parts; the classifier sees
   n_train real (label 1) + n_train synthetic (label 0) records.
3. Classifier: the project's downstream classifier (``models.classifier.build_classifier``)
   as a unidirectional GRU (``num_layers`` = 2) over time, hidden size ``hidden``, whose
   last-layer final state feeds a linear logit, trained by the project's classifier trainer
   (``training.classifier.train_classifier``): BCE-with-logits, Adam (lr 1e-2, gradient norm
   clipped at 1), ``epochs`` passes over the training part in seeded shuffled batches, raised
   until at least ``min_steps`` minibatches have run (TimeGAN runs 2000 steps; 200 is enough
   here and keeps small sets from being under-trained). ``hidden`` = 0 is TimeGAN's rule,
   half the feature dimension floored at 4 (``max(C // 2, 4)``); the default 16 is "or
   more": in a short budget a 4-unit GRU underfits and makes poor synthetic data look good
   (white noise vs AR(1) series, C = 3, L = 48, N = 1400: 0.26 with hidden 4 and 10 epochs at
   lr 1e-3, 0.5 with the defaults).
4. Score = |acc - 0.5|, acc = accuracy at P(real) >= 0.5 on the balanced held-out part.
   0 means indistinguishable (best); 0.5 means perfectly separable.

All randomness (subsampling, split, weight initialization, batch order) derives from
``seed``; the global torch RNG is left untouched. The helpers ``default_hidden``,
``subsample``, ``seeded_init`` and ``training_epochs`` are shared with :mod:`.predictive`
(and ``subsample`` with :mod:`.context_fid` and :mod:`.membership`).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..models.classifier import ClassifierConfig, build_classifier
from ..training.classifier import ClassifierTrainConfig, train_classifier

__all__ = [
    "DiscriminativeConfig",
    "discriminator",
    "discriminative_score",
    "default_hidden",
    "subsample",
    "seeded_init",
    "training_epochs",
]


@dataclass(frozen=True)
class DiscriminativeConfig:
    """Post-hoc real-vs-synthetic GRU. ``hidden`` = 0 picks ``max(C // 2, 4)``."""

    hidden: int = 16
    num_layers: int = 2
    epochs: int = 10
    min_steps: int = 200
    batch_size: int = 128
    lr: float = 1e-2
    grad_clip: float = 1.0
    train_fraction: float = 0.8
    max_records: int = 2000

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.num_layers < 1 or self.epochs < 0 or self.min_steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("hidden >= 0, num_layers >= 1, epochs >= 0, min_steps >= 0, batch_size >= 1 and lr > 0 "
                             "are required")
        if self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.max_records < 2:
            raise ValueError("max_records must be >= 2")

    def to_dict(self) -> dict:
        return asdict(self)


def default_hidden(channels: int, hidden: int = 0) -> int:
    """``hidden`` if positive, else TimeGAN's ``channels // 2`` floored at 4."""
    return int(hidden) if hidden > 0 else max(int(channels) // 2, 4)


def training_epochs(epochs: int, min_steps: int, n: int, batch_size: int) -> int:
    """Whole passes over n records: ``epochs``, raised until at least ``min_steps`` minibatches run."""
    per_epoch = max(1, -(-int(n) // int(batch_size)))
    return max(int(epochs), -(-int(min_steps) // per_epoch))


def subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` records of x [N, ...] drawn without replacement (all of x, shuffled, if n >= N)."""
    idx = rng.permutation(len(x))[: min(int(n), len(x))]
    return np.asarray(x[idx], dtype=np.float32)


@contextlib.contextmanager
def seeded_init(seed: int):
    """Build modules inside this block to get weights that depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def discriminator(channels: int, hidden: int, num_layers: int = 2) -> nn.Module:
    """x [B, C, L] -> logit [B] of "real": a unidirectional GRU over time, Linear on the last
    layer's h_T (``build_classifier`` with ``bidirectional=False``, ``readout="final"``)."""
    return build_classifier(channels, ClassifierConfig(kind="gru", hidden=hidden, num_layers=num_layers,
                                                       bidirectional=False, readout="final"))


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty [N, C, L] array, got shape {x.shape}")
    return x


def discriminative_score(
    real_x: np.ndarray,
    synthetic_x: np.ndarray,
    *,
    seed: int,
    config: DiscriminativeConfig = DiscriminativeConfig(),
) -> dict[str, float]:
    """{"discriminative": |acc - 0.5|, "discriminative_accuracy": acc} on the held-out part.

    real_x [N_real, C, L], synthetic_x [N_syn, C, L] (same C and L), float32, normalized scale.
    """
    real_x, synthetic_x = _check(real_x, "real_x"), _check(synthetic_x, "synthetic_x")
    if real_x.shape[1:] != synthetic_x.shape[1:]:
        raise ValueError(f"real {real_x.shape[1:]} and synthetic {synthetic_x.shape[1:]} shapes differ")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 101]))
    n = min(len(real_x), len(synthetic_x), config.max_records)
    if n < 2:
        raise ValueError("need at least 2 real and 2 synthetic records")
    n_train = min(max(int(round(config.train_fraction * n)), 1), n - 1)
    xr, xs = subsample(real_x, n, rng), subsample(synthetic_x, n, rng)
    x_train = np.concatenate([xr[:n_train], xs[:n_train]])
    y_train = np.concatenate([np.ones(n_train, dtype=np.int64), np.zeros(n_train, dtype=np.int64)])
    x_test = torch.from_numpy(np.concatenate([xr[n_train:], xs[n_train:]]))
    y_test = torch.cat([torch.ones(n - n_train), torch.zeros(n - n_train)])

    channels = real_x.shape[1]
    with seeded_init(seed):
        model = discriminator(channels, default_hidden(channels, config.hidden), config.num_layers)
    epochs = training_epochs(config.epochs, config.min_steps, len(x_train), config.batch_size)
    train_classifier(model, x_train, y_train, ClassifierTrainConfig(epochs=epochs, batch_size=config.batch_size,
                                                                    lr=config.lr, grad_clip=config.grad_clip),
                     seed=int(rng.integers(2**62)))
    with torch.no_grad():
        logits = torch.cat([model(x_test[s : s + 1024]) for s in range(0, len(x_test), 1024)])
    accuracy = float(((logits >= 0).float() == y_test).float().mean())
    return {"discriminative": abs(accuracy - 0.5), "discriminative_accuracy": accuracy}
