"""DP release of phase 0's normalization statistics (Gaussian mechanism on bounded contributions).

Without DP a site releases per-channel moments (count, sum, sum of squares of its observed
training values) and value counts on a [C, 4096] grid -- exact aggregates, which for a small
site come close to listing its values. With any DP mechanism on (``privacy.any_dp``) both are
released as Gaussian mechanisms instead, each one ledger entry (sigma, q = 1, 1 step, clip 1).

**Bounded contributions.** Record i contributes, per channel c, the *distribution* of its observed
values over the bins of a grid: d_ic[b] = (values of record i, channel c in bin b) / (its observed
values in c), so d_ic >= 0 and sum_b d_ic[b] = 1 (0 when the channel is unobserved). The whole
record contributes v_i = [d_i1, ..., d_iC] / sqrt(C):

    ||v_i||_2^2 = (1 / C) sum_c ||d_ic||_2^2 <= (1 / C) sum_c ||d_ic||_1^2 <= 1,

so adding or removing one record moves S = sum_i v_i by at most 1 in L2 (sensitivity 1, by
construction: no clipping is needed and no record is distorted). The release is
S~ = S + N(0, sigma^2 I), i.e. Opacus history entry (sigma, 1.0, 1). The statistics become
*record-weighted* (each record counts once per channel, however many values it has).

**Moments (phase 0a).** The grid is public and data-independent: signed magnitudes
+-2^(k/8) for k = -64..128 (|x| from 2^-8 to 2^16, 8 bins per octave; a middle bin around 0;
values beyond the ends fall in the end bins). From the noised distribution the site computes,
as post-processing, ``ChannelMoments`` with count = record mass, total = sum mass * bin midpoint,
total_sq = sum mass * E[x^2] of a uniform value in the bin (so the within-bin spread is kept).

**Histogram (phase 0b).** The grid is the usual one from the global moments (``[C, 4096]``
bins over mean +- 20 std); a record's distribution is taken over ``DP_HISTOGRAM_BINS`` coarse
bins (groups of adjacent fine bins), noised, and spread evenly back over the fine bins, so the
wire shape and the server's PIT normalizer are unchanged.

**Post-processing** (free under DP): noised masses below t x sigma are set to 0, with t the
normal quantile 1 - ``FALSE_BIN_RATE`` / (number of bins), so that with probability >= 99 % no
empty bin survives (a spurious bin at a far magnitude would wreck the moments); a channel left empty keeps its
largest noised bin (at mass >= 1e-6), so every site answers with a usable statistic. Masses are
scaled back by sqrt(C) (to records). The released statistics depend on the data only through S~.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from ..data.normalize import ChannelHistogram, ChannelMoments

__all__ = [
    "DP_HISTOGRAM_BINS",
    "FALSE_BIN_RATE",
    "threshold",
    "magnitude_edges",
    "record_distributions",
    "gaussian_release",
    "denoise",
    "DPStatistic",
    "dp_moments",
    "dp_histogram",
    "statistics_generator",
]

DP_HISTOGRAM_BINS = 128
FALSE_BIN_RATE = 0.01
MIN_EXPONENT, MAX_EXPONENT, BINS_PER_OCTAVE = -8, 16, 8


def magnitude_edges() -> np.ndarray:
    """The public phase-0a grid [E]: -2^16 ... -2^-8, 2^-8 ... 2^16 (8 edges per octave), 2 * 193 edges."""
    positive = 2.0 ** (np.arange(MIN_EXPONENT * BINS_PER_OCTAVE, MAX_EXPONENT * BINS_PER_OCTAVE + 1) / BINS_PER_OCTAVE)
    return np.concatenate([-positive[::-1], positive])


def record_distributions(x: np.ndarray, mask: np.ndarray | None, edges: np.ndarray) -> np.ndarray:
    """v_i of the module doc, [N, C, B]: per record and channel the fraction of its observed values
    in each bin of ``edges`` ([E] shared by all channels, or [C, E]; B = E - 1), divided by sqrt(C)."""
    if x.ndim != 3:
        raise ValueError(f"expected x of shape [N, C, L], got {x.shape}")
    n, channels, _ = x.shape
    edges = np.broadcast_to(np.asarray(edges, dtype=np.float64), (channels, np.shape(edges)[-1]))
    observed = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    out = np.zeros((n, channels, edges.shape[1] - 1), dtype=np.float64)
    for c in range(channels):
        e = edges[c]
        values = np.clip(x[:, c].astype(np.float64), e[0], e[-1])
        bins = np.clip(np.searchsorted(e, values, side="right") - 1, 0, len(e) - 2)
        rows = np.repeat(np.arange(n)[:, None], x.shape[2], axis=1)
        np.add.at(out[:, c], (rows[observed[:, c]], bins[observed[:, c]]), 1.0)
        totals = out[:, c].sum(axis=1, keepdims=True)
        out[:, c] = np.divide(out[:, c], totals, out=np.zeros_like(out[:, c]), where=totals > 0)
    return out / math.sqrt(channels)


def gaussian_release(total: np.ndarray, *, noise_multiplier: float, generator: torch.Generator) -> np.ndarray:
    """S + N(0, sigma^2) per coordinate (sensitivity 1), float64, noise from ``generator``."""
    noise = torch.randn(total.size, generator=generator, dtype=torch.float64).numpy().reshape(total.shape)
    return total + noise_multiplier * noise


def threshold(num_bins: int) -> float:
    """t such that P(max of ``num_bins`` N(0, 1) draws >= t) <= ``FALSE_BIN_RATE`` (union bound)."""
    return NormalDist().inv_cdf(1.0 - FALSE_BIN_RATE / max(num_bins, 1))


def denoise(noisy: np.ndarray, *, noise_multiplier: float) -> np.ndarray:
    """Post-processing of a noised [C, B] mass (see module doc): threshold at t(C B) x sigma, keep
    each channel's largest bin if nothing is left, non-negative."""
    out = np.where(noisy >= threshold(noisy.size) * noise_multiplier, noisy, 0.0)
    for c in range(out.shape[0]):
        if not (out[c] > 0).any():
            b = int(np.argmax(noisy[c]))
            out[c, b] = max(float(noisy[c, b]), 1e-6)
    return out


@dataclass(frozen=True)
class DPStatistic:
    """A released statistic, the clean record-weighted mass it noised ([C, B], in records) and sigma."""

    value: ChannelMoments | ChannelHistogram
    clean_mass: np.ndarray
    noise_multiplier: float


def _release(x: np.ndarray, mask: np.ndarray | None, edges: np.ndarray, noise_multiplier: float,
             generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(clean S [C, B], post-processed noised mass [C, B]), both scaled back to records."""
    clean = record_distributions(x, mask, edges).sum(axis=0)
    noisy = denoise(gaussian_release(clean, noise_multiplier=noise_multiplier, generator=generator),
                    noise_multiplier=noise_multiplier)
    scale = math.sqrt(x.shape[1])
    return clean * scale, noisy * scale


def dp_moments(x: np.ndarray, mask: np.ndarray | None, *, noise_multiplier: float,
               generator: torch.Generator) -> DPStatistic:
    """Phase 0a under DP: ``ChannelMoments`` from the noised distribution on ``magnitude_edges``."""
    edges = magnitude_edges()
    clean, mass = _release(x, mask, edges, noise_multiplier, generator)
    lo, hi = edges[:-1], edges[1:]
    mid, second = (lo + hi) / 2, (lo * lo + lo * hi + hi * hi) / 3  # E[x], E[x^2] of U(lo, hi)
    moments = ChannelMoments(count=mass.sum(axis=1), total=mass @ mid, total_sq=mass @ second)
    return DPStatistic(moments, clean, noise_multiplier)


def dp_histogram(x: np.ndarray, mask: np.ndarray | None, edges: np.ndarray, *, noise_multiplier: float,
                 generator: torch.Generator, bins: int = DP_HISTOGRAM_BINS) -> DPStatistic:
    """Phase 0b under DP: value counts on ``edges`` [C, B+1] from ``bins`` noised coarse bins
    (B must be a multiple of ``bins``), each coarse mass spread evenly over its fine bins."""
    fine = edges.shape[1] - 1
    if fine % bins:
        raise ValueError(f"{fine} histogram bins cannot be grouped into {bins} coarse bins")
    group = fine // bins
    coarse_edges = edges[:, ::group]
    clean, mass = _release(x, mask, coarse_edges, noise_multiplier, generator)
    counts = np.repeat(mass / group, group, axis=1)
    return DPStatistic(ChannelHistogram(np.asarray(edges, dtype=np.float64), counts), clean, noise_multiplier)


def statistics_generator(reproducible: bool, seed: int, site_index: int, release: int) -> torch.Generator:
    """The noise generator of phase-0 release ``release`` (1 moments, 2 histogram) at a site:
    a site secret unless ``privacy.reproducible-noise`` (see ``randomness``)."""
    from .randomness import dp_generator

    return dp_generator(reproducible, seed, 0, site_index, release)
