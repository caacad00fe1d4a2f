"""Under DP the never-observed channels are filled from the phase-0 DP release, never from a raw
training record (data/impute.py); without DP the training-split medians stay as they were."""

from __future__ import annotations

import numpy as np
import pytest

from tardiff_common.data.contract import SiteData, stratified_split
from tardiff_common.data.impute import impute_splits, normalizer_fill_values
from tardiff_common.data.normalize import CenteredPITNormalizer, ChannelHistogram, ZScoreNormalizer
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.phases import impute_after_phase0, prepare_splits

DP = {"privacy.gradient-sum-dp": True, "privacy.noise-multiplier": 2.0}


def _site(n: int = 60, seed: int = 7) -> SiteData:
    """Channel 1 never observed in every third record (x there: a provisional 999)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, size=(n, 2, 8)).astype(np.float32)
    x[:, 1] += np.linspace(0, 50, n, dtype=np.float32)[:, None]
    mask = np.ones_like(x, dtype=bool)
    never = np.arange(n) % 3 == 0
    mask[never, 1] = False
    x[never, 1] = 999.0
    return SiteData(name="h", x=x, y=(np.arange(n) % 2).astype(np.int64), channels=("a", "b"), mask=mask)


def _release() -> CenteredPITNormalizer:
    """A fixed phase-0 release: the PIT normalizer of a histogram that no record of ``_site`` made."""
    edges = np.tile(np.linspace(-10.0, 60.0, 8), (2, 1))
    counts = np.array([[0, 3, 9, 3, 0, 0, 0], [0, 0, 1, 2, 5, 2, 0]], dtype=np.float64)
    return CenteredPITNormalizer.from_histogram(ChannelHistogram(edges, counts))


def _with_train_record_changed(site: SiteData, config) -> SiteData:
    """``site`` with the observed values of one training record (one observing channel 1) moved far up."""
    train_rows = np.flatnonzero(np.isin(np.arange(site.num_records), _train_indices(site, config)))
    row = next(r for r in train_rows if site.mask[r, 1].all())
    x = site.x.copy()
    x[row] += 1000.0
    return SiteData(name=site.name, x=x, y=site.y, channels=site.channels, mask=site.mask)


def _train_indices(site: SiteData, config) -> np.ndarray:
    tagged = SiteData(site.name, np.broadcast_to(np.arange(site.num_records, dtype=np.float32)[:, None, None],
                                                 site.x.shape).copy(), site.y, site.channels, site.mask)
    split = stratified_split(tagged, fractions=config.data.split_fractions, seed=config.data.split_seed)
    return split.train.x[:, 0, 0].astype(int)


def _fills(splits) -> list[np.ndarray]:
    return [part.x[~part.mask[:, 1].any(axis=1), 1] for part in splits.parts().values()]


def test_histogram_median_is_the_pit_normalizers_centre():
    """The fill value is the median of the released histogram (the x where its CDF is 1/2)."""
    edges = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    counts = np.array([[0.0, 2.0, 6.0, 2.0, 0.0], [1.0, 3.0, 0.0, 4.0, 0.0]])
    values = normalizer_fill_values(CenteredPITNormalizer.from_histogram(ChannelHistogram(edges, counts)), 2)
    # channel a: half of the mass below the middle of bin [2, 3); channel b: 4 of 8 values below 2
    np.testing.assert_allclose(values, [2.5, 2.0], atol=2e-3)
    zscore = ZScoreNormalizer(np.array([3.0, -1.0]), np.array([2.0, 5.0]))
    np.testing.assert_allclose(normalizer_fill_values(zscore, 2), [3.0, -1.0])


def test_under_dp_prepare_splits_leaves_never_observed_channels_for_after_phase0():
    config = preset("tiny").with_overrides(DP)
    site = _site()
    splits = prepare_splits(site, config)
    assert all((f == 999.0).all() for f in _fills(splits))  # untouched: no training median enters
    filled = impute_after_phase0(splits, config, _release())
    expected = normalizer_fill_values(_release(), 2)[1]
    for before, part, fill in zip(splits.parts().values(), filled.parts().values(), _fills(filled), strict=True):
        assert fill.size and np.allclose(fill, expected)
        np.testing.assert_array_equal(part.x[part.mask], before.x[before.mask])
    assert abs(expected - np.median(splits.train.x[:, 1][splits.train.mask[:, 1]])) > 1.0


def test_under_dp_one_training_record_changes_no_fill_value():
    config = preset("tiny").with_overrides(DP)
    site = _site()
    changed = _with_train_record_changed(site, config)
    a = impute_after_phase0(prepare_splits(site, config), config, _release())
    b = impute_after_phase0(prepare_splits(changed, config), config, _release())
    assert a.train.meta["fill_values"] == b.train.meta["fill_values"]
    for fa, fb in zip(_fills(a), _fills(b), strict=True):
        np.testing.assert_array_equal(fa, fb)
    # without DP the same change does move the training median (the dependence DP removes)
    plain = preset("tiny")
    pa, pb = prepare_splits(site, plain), prepare_splits(changed, plain)
    assert pa.train.meta["fill_values"]["b"] != pb.train.meta["fill_values"]["b"]


def test_without_dp_imputation_is_unchanged():
    config = preset("tiny")
    assert not config.privacy.any_dp
    site = _site()
    splits = prepare_splits(site, config)
    reference = impute_splits(stratified_split(site, fractions=config.data.split_fractions,
                                               seed=config.data.split_seed))
    for part, ref in zip(splits.parts().values(), reference.parts().values(), strict=True):
        np.testing.assert_array_equal(part.x, ref.x)
        assert part.meta["fill_values"] == ref.meta["fill_values"]
    assert impute_after_phase0(splits, config, _release()) is splits


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_centralized_pooled_data_imputes_from_the_normalizer_under_dp(dp):
    from tardiff_common.pipeline.centralized import pooled_data
    from tardiff_common.privacy.ledger_policy import SiteLedger

    config = preset("tiny").with_overrides(DP if dp else {})
    site = _site(seed=1)
    ledger = SiteLedger(config, "pooled", len(prepare_splits(site, config).train.y)) if dp else None
    if ledger is not None:
        ledger.plan()
    splits, pooled, normalizer, _ = pooled_data(config, [site], privacy=ledger)
    train_median = np.median(pooled.train.x[:, 1][pooled.train.mask[:, 1]])
    expected = normalizer_fill_values(normalizer, 2)[1] if dp else train_median
    for fill in _fills(pooled):
        assert fill.size and np.allclose(fill, expected)
    assert splits[0].train.meta["fill_values"]["b"] == pytest.approx(float(expected))


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_a_federated_site_imputes_from_the_normalizer_its_message_carries(dp):
    """The ClientApp's handlers after phase 0 see the splits filled from the message's normalizer."""
    from types import SimpleNamespace

    import torch

    from client.app import _normalized
    from client.site import Site
    from tardiff_common import protocol as P
    from tardiff_common.serialization import normalizer_to_numpy

    config = preset("tiny").with_overrides(DP if dp else {})
    msg = SimpleNamespace(content={P.NORMALIZER: P.to_array_record(normalizer_to_numpy(_release()))})

    def model_scale(site_data: SiteData) -> tuple[np.ndarray, np.ndarray]:
        splits = prepare_splits(site_data, config)
        site = Site(index=0, name="h", config=config, splits=splits, device=torch.device("cpu"), node_config={})
        data = _normalized(site, msg)
        never = ~splits.test.mask[:, 1].any(axis=1)
        assert never.any()
        return data.train_x, data.test_x[never, 1]

    site = _site()
    _, filled = model_scale(site)
    train_median = np.median(prepare_splits(site, preset("tiny")).train.x[:, 1][
        prepare_splits(site, preset("tiny")).train.mask[:, 1]])
    expected = normalizer_fill_values(_release(), 2)[1] if dp else train_median
    np.testing.assert_allclose(filled, _release().transform(np.full((1, 2, 1), expected, np.float32))[0, 1, 0],
                               atol=1e-6)
    _, filled_changed = model_scale(_with_train_record_changed(site, config))
    if dp:  # one training record moved: the test records' imputed entries do not move
        np.testing.assert_array_equal(filled, filled_changed)


def test_an_external_cohort_is_filled_from_the_normalizer_under_dp():
    from tardiff_common.pipeline.external import transform_external

    train, cohort = _site(seed=3), _site(seed=4)
    never = ~cohort.mask[:, 1].any(axis=1)
    dp_filled, _ = transform_external(cohort, train, _release(), dp=True)
    np.testing.assert_allclose(dp_filled.x[never, 1], normalizer_fill_values(_release(), 2)[1])
    plain, _ = transform_external(cohort, train, _release())
    np.testing.assert_allclose(plain.x[never, 1], np.median(train.x[:, 1][train.mask[:, 1]]))
