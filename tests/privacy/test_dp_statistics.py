"""Phase 0 under DP: bounded record contributions, noise at sigma x bound, the ledger and epsilon."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tardiff_common.data.normalize import ChannelMoments, histogram_edges_from_moments, make_normalizer
from tardiff_common.pipeline.config import preset
from tardiff_common.privacy.dp_statistics import (
    DP_HISTOGRAM_BINS,
    denoise,
    dp_histogram,
    dp_moments,
    gaussian_release,
    magnitude_edges,
    record_distributions,
)
from tardiff_common.privacy.plan import NORMALIZATION_RELEASES, plan_site


def records(n=30, channels=3, length=12, seed=0, missing=0.2):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(80, 9, (n, length)), rng.normal(97, 1.5, (n, length)),
                  rng.normal(-3, 40, (n, length))][:channels], axis=1)
    mask = rng.random(x.shape) > missing
    mask[0, 1] = False  # a record with one channel unobserved
    return x, mask


@pytest.mark.parametrize("which", ["moments", "histogram"])
def test_one_record_moves_the_clean_statistic_by_at_most_the_bound(which):
    """Sensitivity: adding any one record (also an extreme or a half-missing one) changes S by <= 1 in L2."""
    x, mask = records()
    edges = magnitude_edges() if which == "moments" else \
        histogram_edges_from_moments(ChannelMoments.from_data(x, mask))[:, ::4096 // DP_HISTOGRAM_BINS]
    base = record_distributions(x, mask, edges).sum(axis=0)
    rng = np.random.default_rng(1)
    extremes = [np.full((1, 3, 12), 1e9), np.full((1, 3, 12), 0.0), rng.normal(0, 1e4, (1, 3, 12)), x[:1] * 1.5]
    largest = 0.0
    for extra in extremes:
        for extra_mask in (np.ones_like(extra, dtype=bool), rng.random(extra.shape) > 0.5):
            more = record_distributions(np.concatenate([x, extra]), np.concatenate([mask, extra_mask]), edges).sum(0)
            largest = max(largest, float(np.linalg.norm(more - base)))
    assert largest <= 1.0 + 1e-12
    assert largest > 0.5  # a record concentrated in one bin per channel reaches the bound


def test_record_distributions_are_fractions_per_channel():
    x, mask = records(channels=2)
    d = record_distributions(x, mask, magnitude_edges()) * math.sqrt(2)
    sums = d.sum(axis=2)
    assert np.allclose(sums[mask.any(axis=2)], 1.0) and np.all(sums[~mask.any(axis=2)] == 0.0)


def test_noise_scale_is_sigma_times_the_bound():
    total = np.zeros((3, 200))
    for sigma in (0.5, 4.0):
        noisy = gaussian_release(total, noise_multiplier=sigma, generator=torch.Generator().manual_seed(0))
        assert noisy.std() == pytest.approx(sigma, rel=0.05)  # bound 1: std = sigma * 1
        assert abs(noisy.mean()) < 4 * sigma / math.sqrt(noisy.size)


def test_denoise_keeps_the_signal_and_every_channel_nonempty():
    noisy = np.array([[0.1, -2.0, 50.0, 0.2], [0.3, -0.1, 0.2, 0.4]])
    out = denoise(noisy, noise_multiplier=1.0)
    assert out[0].tolist() == [0.0, 0.0, 50.0, 0.0]
    assert out[1].tolist() == [0.0, 0.0, 0.0, 0.4]  # nothing above 3 sigma: the largest bin is kept
    assert (out >= 0).all()


def test_released_moments_and_histogram_are_close_at_low_noise_and_fit_a_normalizer():
    x, mask = records(n=400)
    exact = ChannelMoments.from_data(x, mask)
    gen = torch.Generator().manual_seed(0)
    moments = dp_moments(x, mask, noise_multiplier=0.5, generator=gen).value
    assert np.allclose(moments.mean, exact.mean, rtol=0.05, atol=2.0)
    assert np.all(moments.std > 0.3 * exact.std) and np.all(moments.std < 3 * exact.std)
    edges = histogram_edges_from_moments(moments)
    hist = dp_histogram(x, mask, edges, noise_multiplier=0.5, generator=gen).value
    assert hist.counts.shape == (3, 4096) and (hist.counts >= 0).all()
    normalizer = make_normalizer("pit", moments, hist)
    u = normalizer.transform(x)
    assert np.median(u[mask]) == pytest.approx(0.0, abs=0.25)


def test_release_depends_on_the_noise():
    x, mask = records()
    a = dp_moments(x, mask, noise_multiplier=1.0, generator=torch.Generator().manual_seed(0)).value
    b = dp_moments(x, mask, noise_multiplier=1.0, generator=torch.Generator().manual_seed(1)).value
    assert not np.allclose(a.total, b.total)


def test_plan_has_the_two_statistics_releases_and_epsilon_grows_with_them():
    """DP on: 2 normalization entries (q = 1, one step each) sharing the gradient sum's sigma,
    and the composed epsilon is larger than that of the same run without them."""
    config = preset("tiny").with_overrides({"privacy.gradient-sum-dp": True, "privacy.noise-multiplier": 2.0})
    plan = plan_site(config, 80)
    stats = [e for e in plan.history() if e.phase == "normalization"]
    assert len(stats) == NORMALIZATION_RELEASES == 2
    assert all(e.noise_multiplier == 2.0 and e.sample_rate == 1.0 and e.steps == 1 for e in stats)
    from tardiff_common.privacy.accounting import epsilon_of

    without = epsilon_of([e for e in plan.history() if e.phase != "normalization"], 1e-5)
    assert plan.epsilon(1e-5, "rdp") > without
    # the same five q = 1 steps at sigma 2 (2 statistics, the sum, the selection and evaluation
    # counts) are one Gaussian mechanism at sigma 2 / sqrt(5)
    assert plan.epsilon(1e-5, "rdp") == pytest.approx(epsilon_of([stats[0].__class__("x", 2 / math.sqrt(5), 1.0, 1,
                                                                                     1.0)], 1e-5), rel=1e-6)


def test_solved_target_covers_the_statistics():
    config = preset("tiny").with_overrides({"privacy.gradient-sum-dp": True, "privacy.dp-sgd-classifier": True,
                                            "privacy.target-epsilon": 3.0})
    plan = plan_site(config, 80)
    assert plan.normalization.noise_multiplier == plan.gradient_sum.noise_multiplier > 0
    assert 2.98 <= plan.epsilon(1e-5, "rdp") <= 3.0
