"""Seeded toy series generators for the metric tests: [N, C, L] float32."""

from __future__ import annotations

import numpy as np


def ar1(n: int, channels: int = 3, length: int = 24, *, phi: float = 0.8, seed: int = 0, shift: float = 0.0):
    """Stationary AR(1) per channel, unit marginal variance, plus a constant ``shift``."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, channels, length))
    x[:, :, 0] = rng.normal(size=(n, channels))
    noise = rng.normal(size=(n, channels, length)) * np.sqrt(1 - phi**2)
    for t in range(1, length):
        x[:, :, t] = phi * x[:, :, t - 1] + noise[:, :, t]
    return (x + shift).astype(np.float32)


def sines(n: int, channels: int = 3, length: int = 24, *, seed: int = 0):
    """Smooth sines with random frequency and phase per record and channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, None, :]
    freq = rng.uniform(0.05, 0.15, size=(n, channels, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, channels, 1))
    return np.sin(2 * np.pi * freq * t + phase).astype(np.float32)


def white_noise(n: int, channels: int = 3, length: int = 24, *, seed: int = 0):
    return np.random.default_rng(seed).normal(size=(n, channels, length)).astype(np.float32)
