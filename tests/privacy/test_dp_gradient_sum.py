"""The DP release of the guidance gradient sum: clipping, noise scale, and the non-DP limit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tardiff_common.influence.gradient_sum import guidance_gradient_sum
from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.privacy.compat import opacus_ready
from tardiff_common.privacy.dp_gradient_sum import (
    clip_rows,
    clipped_gradient_sum,
    deterministic_training_mode,
    dp_gradient_sum,
    per_example_gradients,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def model_and_data(kind: str, n: int = 24, seed: int = 0, hidden: int = 8):
    torch.manual_seed(seed)
    model = build_classifier(3, ClassifierConfig(kind=kind, hidden=hidden, num_layers=2))
    x = torch.randn(n, 3, 12) * 2.0
    y = (torch.arange(n) % 3 == 0).long()
    return model, x, y


MODELS = {kind: model_and_data(kind) for kind in ("cnn", "gru")}


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=5, max_size=5), min_size=1,
                     max_size=8),
       clip=st.floats(1e-3, 1e2))
def test_clip_rows_bounds_every_row(rows, clip):
    clipped, factor = clip_rows(torch.tensor(rows, dtype=torch.float64), clip)
    assert torch.all(clipped.norm(dim=1) <= clip + 1e-9)
    assert torch.all((factor > 0) & (factor <= 1))


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["cnn", "gru"]), index=st.integers(0, 23), clip=st.floats(1e-3, 5.0))
def test_every_per_example_gradient_is_clipped_before_summation(kind, index, clip):
    """A sum over one record is that record's clipped gradient: its norm is <= C (+ tol), for any
    record and C."""
    model, x, y = MODELS[kind]
    single = clipped_gradient_sum(model, x[index : index + 1], y[index : index + 1], clip=clip)
    assert float(single.total.norm()) <= clip + 1e-5


@pytest.mark.parametrize("kind", ["cnn", "gru"])
@pytest.mark.parametrize("clip", [0.05, 1.0])
def test_clipped_sum_is_the_sum_of_clipped_rows(kind, clip):
    model, x, y = MODELS[kind]
    whole = clipped_gradient_sum(model, x, y, clip=clip, batch_size=7)
    order = [n for n, _ in model.named_parameters()]  # the plain model's order (DPGRU registers another)
    with opacus_ready(model), deterministic_training_mode(model):
        rows = per_example_gradients(model, x, y, order).double()
    clipped_rows, factor = clip_rows(rows, clip)
    torch.testing.assert_close(whole.total, clipped_rows.sum(0), rtol=1e-5, atol=1e-6)
    # the reported fraction is the share of rows whose norm exceeded C, and C = 0.05 clips some
    assert whole.clipped_fraction == pytest.approx(float((factor < 1.0).double().mean()))
    assert whole.max_norm == pytest.approx(float(rows.norm(dim=1).max()), rel=1e-6)
    if clip == 0.05:
        assert whole.clipped_fraction > 0.0


@pytest.mark.parametrize("kind", ["cnn", "gru"])
@pytest.mark.parametrize("target_class", [None, 1])
def test_no_noise_and_no_clipping_recover_the_plain_sum(kind, target_class):
    model, x, y = MODELS[kind]
    plain = guidance_gradient_sum(model, x, y, target_class=target_class)
    dp, clipped = dp_gradient_sum(model, x, y, clip=math.inf, noise_multiplier=0.0, generator=torch.Generator(),
                                  target_class=target_class)
    assert dp.count == plain.count and clipped.clipped_fraction == 0.0
    torch.testing.assert_close(dp.total, plain.total, rtol=1e-5, atol=1e-5)
    # and a GRU classifier keeps its plain nn.GRU layers and weights afterwards
    assert [type(m).__name__ for m in model.modules()] == [type(m).__name__ for m in MODELS[kind][0].modules()]


def test_empirical_noise_std_is_sigma_times_clip():
    """noise = G~ - clipped sum over P ~ 3.3k coordinates, 2 seeded draws: std within 4 % of
    sigma * C (the standard error of a std estimate from 6.7k normals is ~0.9 %, so 4 % is > 4 SE),
    mean within 4 SE of 0."""
    model, x, y = model_and_data("cnn", hidden=24)
    sigma, clip = 1.7, 0.3
    noises = []
    for seed in (1, 2):
        released, clipped = dp_gradient_sum(model, x, y, clip=clip, noise_multiplier=sigma,
                                            generator=torch.Generator().manual_seed(seed))
        noises.append((released.total - clipped.total).numpy())
    noise = np.concatenate(noises)
    assert noise.size > 6000
    assert abs(noise.std() / (sigma * clip) - 1.0) < 0.04
    assert abs(noise.mean()) < 4 * sigma * clip / np.sqrt(noise.size)
    assert not np.allclose(noises[0], noises[1])


def test_noise_needs_a_finite_clip():
    model, x, y = MODELS["cnn"]
    with pytest.raises(ValueError, match="finite clip"):
        dp_gradient_sum(model, x, y, clip=math.inf, noise_multiplier=1.0, generator=torch.Generator())
