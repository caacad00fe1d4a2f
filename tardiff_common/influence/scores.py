"""Per-sample usefulness scores for a pool of candidate (synthetic) records.

Every function takes a candidate pool x [N, C, L] (float, on the model scale) and labels y [N]
(int, 0/1) and returns one float64 score per record, [N]; higher = predicted more useful.
Nothing here talks to Flower: the inputs are plain models, tensors and ``GradientSum`` s.

Notation: L(x, y; theta) = BCEWithLogits(f_theta(x), y) (``models.classifier.per_example_loss``);
G = sum_{i in guidance split} grad_theta L(z_i; theta) with n records (``gradient_sum``).

* ``final_influence``      I(x) = < grad_theta L(x, y; theta*), g >, g = G / ||G||, at the trained
                           classifier theta* (the score TarDiff guides with). One SGD step of
                           size lr on x changes the guidance mean loss by -lr * I(x) * ||G|| / n
                           to first order, so I > 0 means "x helps".
* ``trajectory_influence`` TracIn (Pruthi et al., 2020) over the classifier checkpoints
                           theta_1 .. theta_R (one per training / FedAvg round):
                               T(x) = sum_r < grad_theta L(x, y; theta_r), G_r / n_r >,
                           G_r the guidance gradient sum at theta_r. Learning rates are left out
                           (constant factor under a constant lr).
* ``typicality``           -mean_{t, draws} ||eps_phi(x_t, t, y) - eps||^2 / (C L): how well the
                           diffusion model denoises x (higher = more typical for the model).
* ``typical_influence``    z(I) + w z(typicality): influence that stops rewarding atypical records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..diffusion.schedule import NoiseSchedule
from .gradient_sum import GradientSum, trainable_parameters
from .influence_gradient import influence_scores

__all__ = ["final_influence", "trajectory_influence", "typicality", "typical_influence", "standardize"]


def _check_pool(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(y, dtype=torch.long)
    if x.dim() != 3:
        raise ValueError(f"x must be [N, C, L], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be [N] with N = {x.shape[0]} (the records of x), got shape {tuple(y.shape)}")
    return x, y


def _scores_along(model: nn.Module, vector: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """< grad_theta L(x_i, y_i; theta), vector > for every record, [N] float64 (vector need not be unit)."""
    first = next(model.parameters())
    out = []
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device=first.device, dtype=first.dtype)
        yb = y[start : start + batch_size].to(first.device)
        out.append(influence_scores(model, xb, yb, vector.to(first.device)).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def final_influence(classifier: nn.Module, direction: torch.Tensor, x: np.ndarray | torch.Tensor,
                    y: np.ndarray | torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    """I(x_i) = < grad_theta L(x_i, y_i; theta*), g >, [N] float64.

    ``classifier`` is f_theta* (not modified; evaluated without dropout), ``direction`` g [P]
    (normally ``GradientSum.direction()``, i.e. G / ||G||, in ``trainable_parameters`` order).
    Identical to ``pipeline.phases.influence_of``; computed here by one forward-mode jvp per batch.
    """
    x, y = _check_pool(x, y)
    size = sum(p.numel() for p in trainable_parameters(classifier))
    if direction.dim() != 1 or direction.numel() != size:
        raise ValueError(f"direction must be [P] with P = {size} classifier parameters, got {tuple(direction.shape)}")
    return _scores_along(classifier, direction, x, y, batch_size).numpy()


def trajectory_influence(checkpoints: Sequence[nn.Module], gradient_sums: Sequence[GradientSum],
                         x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, batch_size: int = 512,
                         per_checkpoint: bool = False) -> np.ndarray:
    """TracIn-style influence summed over classifier checkpoints:

        T(x_i) = sum_{r=1..R} < grad_theta L(x_i, y_i; theta_r), G_r / n_r >,

    [N] float64 (or [R, N], the terms of the sum, with ``per_checkpoint``).

    ``checkpoints``: R classifiers (``nn.Module``, e.g. ``copy.deepcopy`` of the model after each
    classifier round; the last is theta*). ``gradient_sums``: R ``GradientSum`` s, G_r over the
    guidance split *at* checkpoint r, with n_r = ``count`` records. G_r / n_r is the gradient of
    the guidance-split *mean* loss, so each term is -(first-order change of that mean loss per unit
    step on x at theta_r); the sum weights the rounds by how steep the guidance loss still was
    (early rounds, where the guidance loss falls fast, weigh most). Learning rates are omitted: with
    a constant lr (the pipeline's Adam lr) they are a common positive factor and change no ranking.

    Relation to ``final_influence``: with the single checkpoint theta* and G,
    T(x) = I(x) * ||G|| / n.

    Federated runs: in round r every site k already computes (or can compute) its own G_{r,k} at
    the global model theta_r, and G_r = sum_k G_{r,k}, n_r = sum_k n_{r,k} are exact sums, so T
    is computed from the same released quantity as I (one more gradient sum per round) and is
    private by the same mechanism (secure aggregation / DP noise on G_{r,k}; with DP each round's
    release spends budget, R releases instead of one).
    """
    if len(checkpoints) == 0:
        raise ValueError("trajectory_influence needs at least one checkpoint")
    if len(checkpoints) != len(gradient_sums):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(gradient_sums)} gradient sums (one per checkpoint)")
    x, y = _check_pool(x, y)
    terms = []
    for r, (model, gsum) in enumerate(zip(checkpoints, gradient_sums)):
        size = sum(p.numel() for p in trainable_parameters(model))
        if gsum.total.numel() != size:
            raise ValueError(f"checkpoint {r}: gradient sum has {gsum.total.numel()} entries, the model {size}")
        if gsum.count <= 0:
            raise ValueError(f"checkpoint {r}: gradient sum over {gsum.count} records")
        terms.append(_scores_along(model, gsum.total / gsum.count, x, y, batch_size))
    stacked = torch.stack(terms).numpy()
    return stacked if per_checkpoint else stacked.sum(axis=0)


@torch.no_grad()
def typicality(unet: nn.Module, schedule: NoiseSchedule, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
               *, timesteps: Sequence[int], seed: int, draws: int = 1, batch_size: int = 256,
               conditional: bool = True) -> np.ndarray:
    """typ(x_i) = -(1 / (|T| D)) sum_{t in T} sum_{d=1..D} ||eps_phi(x_{i,t,d}, t, y_i) - eps_{t,d}||^2 / (C L),

    with x_{i,t,d} = sqrt(abar_t) x_i + sqrt(1 - abar_t) eps_{t,d}; [N] float64, higher = the
    diffusion model finds x_i more typical (a weighted denoising-score-matching / ELBO proxy of
    log p(x | y), restricted to a few noise levels).

    ``timesteps``: indices into ``schedule`` (0 = least noisy, < ``schedule.num_steps``).
    ``seed``: the noise eps_{t,d} [C, L] is drawn once per (t, d) from a generator seeded by it and
    is the *same for every record* (common random numbers), so two records' scores differ only
    through the records themselves; the result is deterministic given the seed. ``conditional``:
    condition on y (the label the record was generated / labelled with), else on the null label.
    ``unet`` is evaluated in eval mode (restored afterwards) on its own device.
    """
    x, y = _check_pool(x, y)
    steps = [int(t) for t in timesteps]
    if not steps:
        raise ValueError("typicality needs at least one timestep")
    bad = [t for t in steps if not 0 <= t < schedule.num_steps]
    if bad:
        raise ValueError(f"timesteps {bad} outside 0..{schedule.num_steps - 1}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    first = next(unet.parameters())
    device, dtype = first.device, first.dtype
    n, c, length = x.shape
    generator = torch.Generator().manual_seed(int(seed))
    noises = torch.randn((len(steps), draws, c, length), generator=generator, dtype=torch.float64)
    total = torch.zeros(n, dtype=torch.float64)
    was_training = unet.training
    unet.eval()
    try:
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device=device, dtype=dtype)
            yb = y[start : start + batch_size].to(device) if conditional else None
            b = xb.shape[0]
            for i, t in enumerate(steps):
                tt = torch.full((b,), t, dtype=torch.long, device=device)
                for d in range(draws):
                    eps = noises[i, d].to(device=device, dtype=dtype).expand(b, c, length)
                    pred = unet(schedule.add_noise(xb, eps, tt), tt, yb)
                    total[start : start + b] += ((pred - eps) ** 2).flatten(1).mean(dim=1).double().cpu()
    finally:
        unet.train(was_training)
    return (-total / (len(steps) * draws)).numpy()


def standardize(values: np.ndarray) -> np.ndarray:
    """z = (v - mean) / std over the pool (population std); a constant score gives zeros."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"scores must be [N], got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("scores must be finite to be standardized")
    if v.size == 0:
        return v.copy()
    sd = float(v.std())
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def typical_influence(influence: np.ndarray, typicality: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """z(I) + weight * z(typ), [N] float64: influence with a typicality term.

    Both scores are standardized over the pool (``standardize``) so ``weight`` is a ratio of
    standard deviations and scale-free. First-order influence is largest for high-loss records
    (large gradients), which for generated data are often the atypical / off-manifold ones; the
    typicality term penalizes exactly those. ``weight = 0`` is z(I), a rank-equivalent of I.
    """
    influence = np.asarray(influence, dtype=np.float64)
    typicality = np.asarray(typicality, dtype=np.float64)
    if influence.shape != typicality.shape:
        raise ValueError(f"influence {influence.shape} and typicality {typicality.shape} differ in shape")
    if not np.isfinite(weight):
        raise ValueError(f"weight must be finite, got {weight}")
    return standardize(influence) + float(weight) * standardize(typicality)
