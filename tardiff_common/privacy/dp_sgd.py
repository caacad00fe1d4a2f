"""DP-SGD for one local-training call: the optional ``privacy`` hook of ``train_classifier`` /
``train_diffusion``.

A ``DPTrainingSession`` is made for exactly one training call (one FedAvg round at a site). Its
``private(model, make_optimizer, loader)`` context

1. makes the model Opacus-ready (``compat.opacus_ready``: nn.GRU -> DPGRU, same names),
2. builds the optimizer on those parameters and calls ``PrivacyEngine.make_private`` *once*
   (Poisson sampling with the loader's generator, per-sample clipping to ``max_grad_norm``,
   "flat" = the whole gradient, "per_layer" = each parameter tensor to C / sqrt(#tensors), so the
   total is still <= C; Gaussian noise std sigma * C from ``noise_generator``),
3. yields (GradSampleModule, DPOptimizer, DPDataLoader) for the training loop, and
4. afterwards removes Opacus' hooks (``_close``; no hook ever stays on the caller's model, so
   the next round's call can make it private again without duplicated hooks), swaps the
   original layers back with the trained weights, and keeps the call's accountant history as
   ledger ``entries`` [(sigma, q, steps)], which the site appends to its ledger (kept across
   rounds in the Flower ``context.state``, see ``tardiff_common.protocol``).

Parameters leave the site as the plain model's state dict (no ``_module.`` prefix).

The loss must be a *mean over the batch* (``loss_reduction="mean"``; Opacus divides the noisy
sum by the expected batch size q * N). Poisson batches can be empty; the loop must still run
forward/backward/step on them so that every sampled step is noised and accounted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from opacus import PrivacyEngine
from torch import nn

from .accounting import Entry
from .compat import opacus_ready
from .randomness import dp_generator

__all__ = ["DPTrainingSession"]


class DPTrainingSession:
    """DP-SGD settings for one training call and, after it, the call's ledger ``entries``."""

    def __init__(self, *, phase: str, noise_multiplier: float, max_grad_norm: float, clipping: str = "flat",
                 accountant: str = "rdp", reproducible: bool = False, seed_parts: tuple[int, ...] = ()):
        if clipping not in ("flat", "per_layer"):
            raise ValueError(f"clipping must be 'flat' or 'per_layer', got {clipping!r}")
        if noise_multiplier < 0 or not max_grad_norm > 0 or not math.isfinite(max_grad_norm):
            raise ValueError("DP-SGD needs noise_multiplier >= 0 and a finite max_grad_norm > 0")
        self.phase = phase
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.clipping = clipping
        self.accountant = accountant
        self.reproducible = reproducible
        self.seed_parts = tuple(int(p) for p in seed_parts)
        self.entries: list[Entry] = []
        self._used = False

    def generator(self, seed: int) -> torch.Generator:
        """The training generator (Poisson sampling, and the diffusion loss' t / eps / label
        dropout): a site secret unless ``reproducible``."""
        return dp_generator(self.reproducible, seed, *self.seed_parts, 1)

    @contextmanager
    def private(self, model: nn.Module, make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
                loader: torch.utils.data.DataLoader) -> Iterator[tuple[nn.Module, torch.optim.Optimizer, object]]:
        if self._used:
            raise RuntimeError("a DPTrainingSession makes a model private once; create one per training call")
        self._used = True
        with opacus_ready(model), warnings.catch_warnings():
            # benign Opacus / torch notices: the DP randomness is seeded by us (see ``randomness``), and
            # full backward hooks fire on module outputs when the inputs need no gradient
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
            engine = PrivacyEngine(accountant=self.accountant)
            n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
            max_norm = (self.max_grad_norm if self.clipping == "flat"
                        else [self.max_grad_norm / math.sqrt(n_tensors)] * n_tensors)
            dp_model, dp_optimizer, dp_loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier,
                max_grad_norm=max_norm, poisson_sampling=True, clipping=self.clipping,
                noise_generator=dp_generator(self.reproducible, *self.seed_parts, 2), grad_sample_mode="hooks",
            )
            try:
                yield dp_model, dp_optimizer, dp_loader
            finally:
                dp_model._close()
                self.entries = [Entry(self.phase, float(nm), float(q), int(n), self.max_grad_norm)
                                for nm, q, n in engine.accountant.history]

    @property
    def steps(self) -> int:
        return int(sum(e.steps for e in self.entries))
