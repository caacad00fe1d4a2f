"""Usefulness scores of candidate records: final / trajectory influence, typicality, typical influence."""

import copy

import numpy as np
import pytest
import torch

from tardiff_common.diffusion.schedule import NoiseSchedule
from tardiff_common.influence.gradient_sum import GradientSum, guidance_gradient_sum
from tardiff_common.influence.scores import (
    final_influence,
    standardize,
    trajectory_influence,
    typical_influence,
    typicality,
)
from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.models.unet1d import UNet1D, UNet1DConfig
from tardiff_common.pipeline.phases import influence_of
from tardiff_common.training.classifier import ClassifierTrainConfig, train_classifier
from tardiff_common.training.diffusion import DiffusionTrainConfig, train_diffusion


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest and immune to a busy machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pool(n=20, length=12, seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(np.int64)
    x = rng.normal(size=(n, 3, length)).astype(np.float32)
    x[:, 0] += y[:, None] * np.linspace(-1, 1, length, dtype=np.float32)
    return x, y


@pytest.fixture(params=["cnn", "gru"])
def classifier_and_sum(request):
    torch.manual_seed(0)
    model = build_classifier(3, ClassifierConfig(kind=request.param, hidden=6, num_layers=1))
    xg, yg = pool(30, seed=1)
    return model, guidance_gradient_sum(model, xg, yg)


def test_final_influence_matches_pipeline_influence_of(classifier_and_sum):
    model, gsum = classifier_and_sum
    x, y = pool()
    scores = final_influence(model, gsum.direction(), x, y, batch_size=7)
    assert scores.shape == (20,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, influence_of(model, gsum.direction(), x, y), rtol=1e-5, atol=1e-7)


def test_single_checkpoint_trajectory_is_final_influence_times_norm_over_count(classifier_and_sum):
    model, gsum = classifier_and_sum
    x, y = pool()
    final = final_influence(model, gsum.direction(), x, y)
    traj = trajectory_influence([model], [gsum], x, y)
    factor = float(gsum.total.norm()) / gsum.count
    np.testing.assert_allclose(traj, final * factor, rtol=1e-4, atol=1e-7 * factor)


def test_trajectory_sums_its_checkpoint_terms():
    x, y = pool(40)
    xg, yg = pool(30, seed=1)
    torch.manual_seed(0)
    model = build_classifier(3, ClassifierConfig(kind="cnn", hidden=6, num_layers=1))
    checkpoints, sums = [], []
    for r in range(3):
        train_classifier(model, x, y, ClassifierTrainConfig(epochs=1, batch_size=16), seed=r)
        checkpoints.append(copy.deepcopy(model))
        sums.append(guidance_gradient_sum(model, xg, yg))
    terms = trajectory_influence(checkpoints, sums, x, y, per_checkpoint=True)
    assert terms.shape == (3, 40)
    np.testing.assert_allclose(trajectory_influence(checkpoints, sums, x, y), terms.sum(0))
    for r in range(3):
        expected = final_influence(checkpoints[r], sums[r].direction(), x, y) * float(sums[r].total.norm()) / 30
        np.testing.assert_allclose(terms[r], expected, rtol=1e-4, atol=1e-8)


def test_trajectory_errors(classifier_and_sum):
    model, gsum = classifier_and_sum
    x, y = pool()
    with pytest.raises(ValueError, match="at least one checkpoint"):
        trajectory_influence([], [], x, y)
    with pytest.raises(ValueError, match="one per checkpoint"):
        trajectory_influence([model, model], [gsum], x, y)
    with pytest.raises(ValueError, match="gradient sum over 0"):
        trajectory_influence([model], [GradientSum(gsum.total, 0)], x, y)
    with pytest.raises(ValueError, match="entries"):
        trajectory_influence([model], [GradientSum(torch.zeros(3, dtype=torch.float64), 1)], x, y)
    with pytest.raises(ValueError, match=r"y must be \[N\]"):
        final_influence(model, gsum.direction(), x, y[:-1])
    with pytest.raises(ValueError, match=r"x must be \[N, C, L\]"):
        final_influence(model, gsum.direction(), x[:, 0], y)
    with pytest.raises(ValueError, match="direction must be"):
        final_influence(model, gsum.direction()[:-1], x, y)


def smooth_series(n, length, rng):
    """Training-like data: smooth random sinusoids, one per channel, amplitude ~1."""
    t = np.linspace(0, 2 * np.pi, length)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 3, 1))
    amp = rng.uniform(0.7, 1.3, size=(n, 3, 1))
    return (amp * np.sin(t + phase)).astype(np.float32)


def tiny_unet_and_schedule():
    torch.manual_seed(0)
    return UNet1D(UNet1DConfig.tiny(3)), NoiseSchedule.from_name("sqrt_linear", 20)


@pytest.fixture(scope="module")
def trained_unet(one_thread):
    """A tiny U-Net after 20 steps on smooth series (about 0.5 s on one thread)."""
    rng = np.random.default_rng(0)
    x = smooth_series(64, 16, rng)
    y = rng.integers(0, 2, size=64)
    unet, schedule = tiny_unet_and_schedule()
    train_diffusion(unet, schedule, x, y, DiffusionTrainConfig(epochs=10, batch_size=32, lr=1e-2, loss="l2"), seed=0)
    return unet.eval(), schedule


def test_typicality_is_deterministic_and_shaped(trained_unet):
    unet, schedule = trained_unet
    x, y = pool(10, length=16)
    a = typicality(unet, schedule, x, y, timesteps=[2, 8], seed=3, batch_size=4)
    b = typicality(unet, schedule, x, y, timesteps=[2, 8], seed=3)
    c = typicality(unet, schedule, x, y, timesteps=[2, 8], seed=4)
    assert a.shape == (10,) and a.dtype == np.float64 and np.all(a <= 0)
    np.testing.assert_allclose(a, b, rtol=1e-6)  # batching does not change a record's noise
    assert not np.allclose(a, c)
    assert typicality(unet, schedule, x, y, timesteps=[2], seed=3, draws=3).shape == (10,)


def test_typicality_prefers_training_like_data_over_noise(trained_unet):
    """Fresh draws from the training distribution score higher than white noise, and training is
    what separates them (an untrained U-Net barely tells them apart)."""
    rng = np.random.default_rng(1)
    like = smooth_series(32, 16, rng)
    noise = rng.normal(size=(32, 3, 16)).astype(np.float32)
    y = rng.integers(0, 2, size=32)

    def gap(unet, schedule):
        s_like = typicality(unet, schedule, like, y, timesteps=[3, 8, 14], seed=0, draws=2)
        s_noise = typicality(unet, schedule, noise, y, timesteps=[3, 8, 14], seed=0, draws=2)
        return float(np.median(s_like) - np.median(s_noise)), float(np.mean(s_like > s_noise.max()))

    trained_gap, separated = gap(*trained_unet)
    untrained_gap, _ = gap(*tiny_unet_and_schedule())
    assert trained_gap > 0.2 and trained_gap > 3 * abs(untrained_gap)
    assert separated > 0.9  # nearly every smooth series beats every noise series


def test_typicality_errors(trained_unet):
    unet, schedule = trained_unet
    x, y = pool(4, length=16)
    with pytest.raises(ValueError, match="outside"):
        typicality(unet, schedule, x, y, timesteps=[20], seed=0)
    with pytest.raises(ValueError, match="at least one timestep"):
        typicality(unet, schedule, x, y, timesteps=[], seed=0)
    with pytest.raises(ValueError, match="draws"):
        typicality(unet, schedule, x, y, timesteps=[1], seed=0, draws=0)


def test_typical_influence_is_a_sum_of_z_scores():
    infl = np.array([1.0, 2.0, 3.0, 4.0])
    typ = np.array([-4.0, -1.0, -1.0, -2.0])
    z = typical_influence(infl, typ, weight=0.5)
    np.testing.assert_allclose(z, standardize(infl) + 0.5 * standardize(typ))
    np.testing.assert_allclose(z.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(typical_influence(infl, typ, weight=0.0), standardize(infl))
    np.testing.assert_allclose(standardize(np.full(3, 2.0)), np.zeros(3))  # a constant score carries no ranking
    # scale-free: rescaling either score changes nothing
    np.testing.assert_allclose(typical_influence(1e3 * infl, 1e-3 * typ), typical_influence(infl, typ))
    with pytest.raises(ValueError, match="differ in shape"):
        typical_influence(infl, typ[:3])
    with pytest.raises(ValueError, match="finite"):
        typical_influence(np.array([1.0, np.nan]), np.array([0.0, 1.0]))
