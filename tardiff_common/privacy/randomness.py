"""Where a site's DP randomness (Gaussian noise, Poisson sampling) comes from.

The DP guarantee assumes the server cannot predict the noise. The run seed is part of the run
config, which the server knows, so by default every DP generator is seeded from ``os.urandom``
(a secret of the site). ``reproducible=True`` (``privacy.reproducible-noise``) derives the seed
from the run seed and the given parts instead: for experiments and tests only.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["dp_seed", "dp_generator"]


def dp_seed(reproducible: bool, *parts: int) -> int:
    """A 63-bit seed: derived from ``parts`` if ``reproducible``, else from os.urandom."""
    if reproducible:
        return int(np.random.SeedSequence([int(p) for p in parts] + [0xD1FF]).generate_state(2, np.uint64)[0] >> 1)
    return int.from_bytes(os.urandom(8), "little") >> 1


def dp_generator(reproducible: bool, *parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``dp_seed``."""
    return torch.Generator().manual_seed(dp_seed(reproducible, *parts))
