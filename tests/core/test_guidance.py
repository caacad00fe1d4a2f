"""Guided sampling: s = 0 reproduces unguided sampling bit for bit; s > 0 raises influence."""

import numpy as np
import pytest
import torch

from tardiff_common.diffusion.sampling import SamplingConfig, sample, synthetic_labels
from tardiff_common.diffusion.schedule import NoiseSchedule
from tardiff_common.influence.gradient_sum import guidance_gradient_sum
from tardiff_common.influence.guidance import Candidate, GuidanceConfig, InfluenceGuidance, parse_candidates
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
    ("ddim", "normalized", "jvp"),
    ("ddpm", "x0", "jvp"),
    ("ddim", "x0", "central_difference"),
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
                    guidance=InfluenceGuidance(clf, g, GuidanceConfig(scale={"code": 1e-2, "paper": 50.0}.get(form, 0.5),
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


def test_guided_fraction_counts_only_steps_the_form_acts_on(setup):
    _, clf, g, _ = setup
    ddim_like = [0.5] * 7 + [0.0]  # the last DDIM step has zero variance
    paper = InfluenceGuidance(clf, g, GuidanceConfig(scale=1.0, guided_fraction=0.25))
    assert paper.guided_steps(ddim_like) == {5, 6}  # two steps that change the sample, not one
    x0 = InfluenceGuidance(clf, g, GuidanceConfig(scale=1.0, form="x0", guided_fraction=0.25))
    assert x0.guided_steps(ddim_like) == {6, 7}  # the x0 form acts on the last step too
    assert InfluenceGuidance(clf, g, GuidanceConfig(scale=1.0, guided_fraction=0.0)).guided_steps(ddim_like) == set()
    assert paper.guided_steps([0.5] * 8) == {6, 7}


@pytest.mark.parametrize("form", ["paper", "normalized", "x0"])
def test_last_step_guidance_changes_the_sample(setup, form):
    """guided_fraction = 1 / steps guides one step that moves the sample (the old paper form moved nothing)."""
    unet, clf, g, sched = setup
    labels = synthetic_labels(6, 0.5)
    cfg = SamplingConfig(num_inference_steps=5, batch_size=6)
    plain = sample(unet, sched, labels, 16, cfg, seed=2)
    one = InfluenceGuidance(clf, g, GuidanceConfig(scale=300.0 if form == "paper" else 0.3, form=form,
                                                   guided_fraction=0.2))
    assert len(one.guided_steps([1.0] * 4 + [0.0])) == 1
    assert not np.array_equal(plain, sample(unet, sched, labels, 16, cfg, seed=2, guidance=one))


@pytest.mark.parametrize("form", ["normalized", "x0"])
def test_new_forms_are_unguided_at_zero_and_tend_to_it(setup, form):
    unet, clf, g, sched = setup
    labels = synthetic_labels(8, 0.5)
    cfg = SamplingConfig(num_inference_steps=6, batch_size=8)
    plain = sample(unet, sched, labels, 16, cfg, seed=5)
    gaps = []
    for scale in (0.0, 1e-4, 1e-3, 1e-2):
        guided = sample(unet, sched, labels, 16, cfg, seed=5,
                        guidance=InfluenceGuidance(clf, g, GuidanceConfig(scale=scale, form=form)))
        gaps.append(float(np.abs(guided - plain).max()))
    assert gaps[0] == 0.0
    assert 0 < gaps[1] < gaps[2] < gaps[3]
    assert gaps[1] < 0.3 * gaps[2] < 0.09 * gaps[3]  # first order in s: the gap shrinks with s


def test_x0_form_stays_in_the_data_range(setup):
    """The corrected x0 is clipped like x0_hat, so even a huge step keeps the final samples in range."""
    unet, clf, g, sched = setup
    labels = synthetic_labels(8, 0.5)
    cfg = SamplingConfig(num_inference_steps=6, batch_size=8, clip_x0=1.0)
    far = sample(unet, sched, labels, 16, cfg, seed=5,
                 guidance=InfluenceGuidance(clf, g, GuidanceConfig(scale=50.0, form="x0")))
    assert np.abs(far).max() <= 1.0 + 1e-5


def test_candidates_always_include_unguided():
    cands = parse_candidates("paper:10, x0:0.1,paper:10,filter:0.25")
    assert cands[0] == Candidate("paper", 0.0) and cands[0].label == "unguided"
    assert [c.label for c in cands[1:]] == ["paper:10", "x0:0.1", "filter:0.25"]
    for bad in ("paper", "magic:1", "paper:-1", "filter:1.0"):
        with pytest.raises(ValueError, match="guidance.candidates"):
            parse_candidates(bad)
    assert GuidanceConfig().auto and GuidanceConfig(scale="3").scale == 3.0
    with pytest.raises(ValueError, match="resolved"):
        InfluenceGuidance(build_classifier(3, ClassifierConfig(kind="gru", hidden=4, num_layers=1)),
                          torch.zeros(1), GuidanceConfig())


def test_bad_guidance_config():
    with pytest.raises(ValueError, match="unknown guidance form"):
        GuidanceConfig(form="other")
    with pytest.raises(ValueError, match="number >= 0 or 'auto'"):
        GuidanceConfig(scale="big")
    with pytest.raises(ValueError, match="unknown influence gradient"):
        GuidanceConfig(method="finite")
    assert GuidanceConfig.public_code().scale == 1e-5
