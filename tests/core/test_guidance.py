"""Guided sampling: s = 0 reproduces unguided sampling bit for bit; s > 0 raises influence."""

import numpy as np
import pytest
import torch

from tardiff_common.diffusion.sampling import SamplingConfig, sample, synthetic_labels
from tardiff_common.diffusion.schedule import NoiseSchedule
from tardiff_common.influence.gradient_sum import guidance_gradient_sum
from tardiff_common.influence.guidance import GuidanceConfig, InfluenceGuidance
from tardiff_common.influence.influence_gradient import influence_scores
from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.models.unet1d import UNet1D, UNet1DConfig


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    unet = UNet1D(UNet1DConfig.tiny(3)).eval()
    clf = build_classifier(3, ClassifierConfig(kind="gru", hidden=8, num_layers=1)).eval()
    x = torch.rand(30, 3, 16) * 2 - 1
    y = (torch.arange(30) % 4 == 0).long()
    g = guidance_gradient_sum(clf, x, y).direction()
    return unet, clf, g, NoiseSchedule.from_name("sqrt_linear", 30)


CASES = [
    ("ddim", "paper", "jvp"),
    ("ddpm", "paper", "central_difference"),
    ("ddim", "code", "batch_normalized"),
    ("ddim", "code", "double_backprop"),
]


@pytest.mark.parametrize("sampler, form, method", CASES)
def test_scale_zero_is_bitwise_unguided(setup, sampler, form, method):
    unet, clf, g, sched = setup
    labels = synthetic_labels(6, 0.5)
    cfg = SamplingConfig(sampler=sampler, num_inference_steps=6, batch_size=4)
    plain = sample(unet, sched, labels, 16, cfg, seed=7)
    guidance = InfluenceGuidance(clf, g, GuidanceConfig(scale=0.0, form=form, method=method))
    guided = sample(unet, sched, labels, 16, cfg, seed=7, guidance=guidance)
    assert np.array_equal(plain, guided)
    pushed = sample(unet, sched, labels, 16, cfg, seed=7,
                    guidance=InfluenceGuidance(clf, g, GuidanceConfig(scale=1e-2 if form == "code" else 50.0,
                                                                      form=form, method=method)))
    assert not np.array_equal(plain, pushed)


def test_guidance_raises_mean_influence(setup):
    unet, clf, g, sched = setup
    labels = synthetic_labels(64, 0.5)
    cfg = SamplingConfig(num_inference_steps=10, batch_size=64)
    plain = sample(unet, sched, labels, 16, cfg, seed=3)
    guided = sample(unet, sched, labels, 16, cfg, seed=3,
                    guidance=InfluenceGuidance(clf, g, GuidanceConfig(scale=300.0)))
    y = torch.as_tensor(labels)
    before = influence_scores(clf, torch.as_tensor(plain), y, g).mean().item()
    after = influence_scores(clf, torch.as_tensor(guided), y, g).mean().item()
    assert after > before


def test_guided_fraction_limits_guided_steps(setup):
    _, clf, g, _ = setup
    guidance = InfluenceGuidance(clf, g, GuidanceConfig(guided_fraction=0.25))
    assert [guidance.is_guided(i, 8) for i in range(8)] == [False] * 6 + [True] * 2
    assert not any(InfluenceGuidance(clf, g, GuidanceConfig(guided_fraction=0.0)).is_guided(i, 8) for i in range(8))


def test_bad_guidance_config():
    with pytest.raises(ValueError, match="unknown guidance form"):
        GuidanceConfig(form="other")
    with pytest.raises(ValueError, match="unknown influence gradient"):
        GuidanceConfig(method="finite")
    assert GuidanceConfig.public_code().scale == 1e-5
