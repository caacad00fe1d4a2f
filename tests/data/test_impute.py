"""Imputation statistics come from the training split of the site that owns them (issue 15 case 13)."""

from __future__ import annotations

import numpy as np
import pytest

from tardiff_common.data.contract import SiteData, SiteSplits
from tardiff_common.data.impute import apply_fill_values, fit_fill_values, impute_splits
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.phases import prepare_splits


def _site(name: str, level: float, n: int = 40, *, seed: int = 0, never_every: int = 3) -> SiteData:
    """Channel 0 observed everywhere around ``level``; channel 1 never observed in every
    ``never_every``-th record (x there holds a provisional 999, as a loader would leave it)."""
    rng = np.random.default_rng(seed)
    x = (level + rng.normal(0, 1, size=(n, 2, 8))).astype(np.float32)
    mask = np.ones_like(x, dtype=bool)
    never = np.arange(n) % never_every == 0
    mask[never, 1] = False
    x[never, 1] = 999.0
    y = (np.arange(n) % 2).astype(np.int64)
    return SiteData(name=name, x=x, y=y, channels=("a", "b"), mask=mask)


def test_fill_values_are_the_training_medians_of_observed_values():
    train = _site("h", 10.0)
    values = fit_fill_values(train)
    expected = [np.median(train.x[:, c][train.mask[:, c]]) for c in range(2)]
    np.testing.assert_allclose(values, expected)


def test_held_out_splits_and_external_cohorts_use_training_medians_only():
    # validation / test / external records sit near 100, training ones near 10: any use of their
    # own values would move the fill towards 100.
    splits = SiteSplits(_site("h", 10.0, seed=1), _site("h", 100.0, seed=2), _site("h", 100.0, seed=3),
                        _site("h", 100.0, seed=4))
    out = impute_splits(splits)
    train_median = np.median(splits.train.x[:, 1][splits.train.mask[:, 1]])
    for before, part in zip(splits.parts().values(), out.parts().values(), strict=True):
        never = ~part.mask[:, 1].any(axis=1)
        assert never.any()
        np.testing.assert_allclose(part.x[never, 1], train_median)
        np.testing.assert_array_equal(part.x[part.mask], before.x[before.mask])  # observed values untouched
    external = apply_fill_values(_site("ext", 100.0, seed=5), fit_fill_values(splits.train))
    never = ~external.mask[:, 1].any(axis=1)
    np.testing.assert_allclose(external.x[never, 1], train_median)
    assert abs(train_median - 10.0) < 2


def test_prepare_splits_fills_from_this_sites_training_split():
    config = preset("tiny")
    # A site whose records differ a lot: the median of all records differs from the training one.
    site = _site("h", 0.0, n=60, seed=7)
    x = site.x.copy()
    x[:, 1] += np.linspace(0, 50, 60)[:, None]  # channel 1 level varies by record
    site = SiteData(name="h", x=x, y=site.y, channels=site.channels, mask=site.mask)
    splits = prepare_splits(site, config)
    train_median = np.median(splits.train.x[:, 1][splits.train.mask[:, 1]])
    all_median = np.median(site.x[:, 1][site.mask[:, 1]])
    assert abs(train_median - all_median) > 1e-3
    for part in splits.parts().values():
        never = ~part.mask[:, 1].any(axis=1)
        np.testing.assert_allclose(part.x[never, 1], train_median, rtol=1e-6)


def test_channel_never_observed_in_training_is_named():
    train = _site("hospital_b", 10.0)
    mask = train.mask.copy()
    mask[:, 1] = False
    with pytest.raises(ValueError, match=r"site 'hospital_b': channel 'b' is never observed in its training split"):
        fit_fill_values(SiteData("hospital_b", train.x, train.y, train.channels, mask))


def test_wrong_number_of_fill_values_is_named():
    with pytest.raises(ValueError, match=r"site 'h'.*2 channels"):
        apply_fill_values(_site("h", 1.0), np.zeros(3))
