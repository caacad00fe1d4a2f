import numpy as np
import pytest
from scipy import linalg

from tardiff_common.metrics.context_fid import ContextFIDConfig, RandomConvEncoder, context_fid, frechet_distance

from .series import ar1, white_noise

CONFIG = ContextFIDConfig(num_kernels=16)


def fid(real, fake, seed=0):
    return context_fid(real, fake, seed=seed, config=CONFIG)["context_fid"]


def test_identical_sets_are_at_zero():
    x = ar1(300, seed=0)
    assert fid(x, x.copy()) < 1e-6


def test_distance_grows_monotonically_with_a_shift():
    real = ar1(300, seed=0)
    values = [fid(real, ar1(300, seed=1, shift=s)) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[-1] > 10 * values[0]


def test_noise_is_farther_than_fresh_samples_of_the_same_process():
    real = ar1(300, seed=0)
    assert fid(real, ar1(300, seed=1)) < fid(real, white_noise(300, seed=1))


def test_encoder_is_fixed_by_its_seed():
    x = ar1(20, channels=4, length=30, seed=0)
    e1 = RandomConvEncoder(4, 30, num_kernels=8, seed=0)(x)
    e2 = RandomConvEncoder(4, 30, num_kernels=8, seed=0)(x)
    e3 = RandomConvEncoder(4, 30, num_kernels=8, seed=1)(x)
    assert e1.shape == (20, 16) and np.array_equal(e1, e2) and not np.array_equal(e1, e3)
    assert RandomConvEncoder(2, 3, num_kernels=4)(np.zeros((2, 2, 3), np.float32)).shape == (2, 8)  # L < kernel


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + np.eye(5), np.diag(rng.uniform(0.5, 2, 5))
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(d21, rel=1e-8)
    root = linalg.sqrtm(s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(root @ s1 @ root))
    assert d12 == pytest.approx(float(np.real(expected)), rel=1e-6)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
    assert frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]), np.array([[1.0]])) == pytest.approx(2.0)


def test_singular_covariances_stay_finite():
    s = np.zeros((3, 3))
    s[0, 0] = 1.0
    assert np.isfinite(frechet_distance(np.zeros(3), s, np.ones(3), np.zeros((3, 3))))


def test_frechet_distance_matches_the_general_sqrtm_form_on_singular_covariances():
    """A small set (n < dimension) has singular covariances, as a small site's candidate set does."""
    rng = np.random.default_rng(4)
    e1, e2 = rng.normal(size=(12, 40)), rng.normal(size=(12, 40)) * 1.3 + 0.2
    mu1, s1, mu2, s2 = e1.mean(0), np.cov(e1, rowvar=False), e2.mean(0), np.cov(e2, rowvar=False)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
