import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tardiff_common.data.normalize import (
    CenteredPITNormalizer,
    ChannelHistogram,
    ChannelMoments,
    ZScoreNormalizer,
    fit_normalizer,
    histogram_edges_from_moments,
    make_normalizer,
    normalizer_from_state,
)


def assert_round_trip(norm, x, mask):
    """inverse(transform(x)) == x on the training values, up to float32 rounding (1e-4 std)."""
    err = np.where(mask, np.abs(norm.inverse_transform(norm.transform(x)) - x), 0).max(axis=(0, 2))
    assert np.all(err <= 1e-4 * x.std(axis=(0, 2)) + 1e-5), err


def data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(80, 12, (n, 20)), rng.gamma(2, 3, (n, 20)), 100 - rng.exponential(2, (n, 20))], axis=1)
    mask = rng.random(x.shape) > 0.1
    return x.astype(np.float32), mask


def test_pit_maps_into_unit_interval_and_inverts_exactly():
    x, mask = data()
    norm = fit_normalizer("pit", x, mask)
    u = norm.transform(x)
    assert u.min() >= -1 and u.max() <= 1
    # centered: the median of training values maps near 0
    assert abs(np.median(u[:, 0][mask[:, 0]])) < 0.05
    assert_round_trip(norm, x, mask)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(-3, 3))
def test_pit_inverse_property(seed, shift):
    x, mask = data(seed, n=16)
    x = x + shift
    norm = fit_normalizer("pit", x, mask)
    assert_round_trip(norm, x, mask)


def test_pit_uses_the_data_span():
    """-1 and 1 decode to (about) the smallest and largest training values, not the grid's ends."""
    x, mask = data()
    norm = fit_normalizer("pit", x, mask)
    ends = norm.inverse_transform(np.array([[[-1.0], [-1.0], [-1.0]], [[1.0], [1.0], [1.0]]], dtype=np.float32))
    observed = [x[:, c][mask[:, c]] for c in range(3)]
    for c in range(3):
        spread = observed[c].std()
        assert abs(ends[0, c, 0] - observed[c].min()) < 0.02 * spread
        assert abs(ends[1, c, 0] - observed[c].max()) < 0.02 * spread


def test_pit_is_monotone():
    x, mask = data()
    norm = fit_normalizer("pit", x, mask)
    grid = np.linspace(x.min(), x.max(), 500, dtype=np.float32)
    u = norm.transform(np.broadcast_to(grid, (1, 3, 500)).copy())
    assert np.all(np.diff(u, axis=2) >= 0)


def test_zscore_inverse_and_moments():
    x, mask = data()
    norm = fit_normalizer("zscore", x, mask)
    z = norm.transform(x)
    assert abs(z[:, 0][mask[:, 0]].mean()) < 1e-4
    np.testing.assert_allclose(norm.inverse_transform(z), x, rtol=1e-5, atol=1e-3)


def test_site_statistics_sum_to_pooled_statistics():
    """Federated fitting (sum of site statistics) is exactly the pooled fit."""
    x, mask = data(n=90)
    parts = [slice(0, 10), slice(10, 55), slice(55, 90)]
    moments = [ChannelMoments.from_data(x[p], mask[p]) for p in parts]
    merged = moments[0] + moments[1] + moments[2]
    pooled = ChannelMoments.from_data(x, mask)
    np.testing.assert_allclose(merged.total, pooled.total, rtol=1e-12)
    np.testing.assert_array_equal(merged.count, pooled.count)
    edges = histogram_edges_from_moments(pooled)
    hist = sum((ChannelHistogram.from_data(x[p], edges, mask[p]) for p in parts[1:]),
               ChannelHistogram.from_data(x[parts[0]], edges, mask[parts[0]]))
    fed = make_normalizer("pit", merged, hist)
    central = fit_normalizer("pit", x, mask)
    np.testing.assert_allclose(fed.transform(x), central.transform(x), atol=1e-6)


def test_masked_values_do_not_enter_statistics():
    x, mask = data()
    x2 = x.copy()
    x2[~mask] = 1e6
    a = ChannelMoments.from_data(x, mask)
    b = ChannelMoments.from_data(x2, mask)
    np.testing.assert_array_equal(a.total, b.total)


def test_state_roundtrip_and_bad_state():
    x, mask = data()
    for kind in ("pit", "zscore"):
        norm = fit_normalizer(kind, x, mask)
        back = normalizer_from_state(norm.state_dict())
        np.testing.assert_array_equal(back.transform(x), norm.transform(x))
    with pytest.raises(ValueError, match="unknown normalizer"):
        normalizer_from_state({"kind": "minmax"})
    with pytest.raises(ValueError, match="strictly increasing"):
        CenteredPITNormalizer([np.array([0.0, 0.0, 1.0])], [np.array([-1.0, 0.0, 1.0])])
    with pytest.raises(ValueError, match="unknown normalizer"):
        make_normalizer("minmax", ChannelMoments.from_data(x))
    assert isinstance(normalizer_from_state(ZScoreNormalizer(np.zeros(3), np.ones(3)).state_dict()), ZScoreNormalizer)
