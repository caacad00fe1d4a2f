import numpy as np
import pytest

from tardiff_common.data.contract import SiteData, concat_sites, stratified_split, validate_site


def make_site(n=50, c=3, length=12, prevalence=0.2, name="site_x", seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) < int(prevalence * n)).astype(np.int64)
    rng.shuffle(y)
    return SiteData(name=name, x=rng.normal(size=(n, c, length)).astype(np.float32), y=y,
                    channels=tuple(f"ch{i}" for i in range(c)))


def test_valid_site_passes_and_casts():
    site = make_site()
    site = SiteData(site.name, site.x.astype(np.float64), site.y.astype(np.int32), site.channels)
    out = validate_site(site)
    assert out.x.dtype == np.float32 and out.y.dtype == np.int64


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: SiteData(s.name, s.x[0], s.y, s.channels), "x must be an array"),
        (lambda s: SiteData(s.name, s.x[:0], s.y[:0], s.channels), "empty"),
        (lambda s: SiteData(s.name, s.x, s.y[:-1], s.channels), "y must have shape"),
        (lambda s: SiteData(s.name, s.x, s.y, s.channels[:2]), "channel names"),
        (lambda s: SiteData(s.name, s.x, np.where(s.y == 1, 2, 0), s.channels), "labels must be in"),
        (lambda s: SiteData(s.name, s.x, np.zeros_like(s.y), s.channels), "only class 0"),
        (lambda s: SiteData(s.name, s.x, s.y, s.channels, mask=np.ones((2, 2), bool)), "mask shape"),
    ],
)
def test_bad_input_raises_naming_site(mutate, message):
    with pytest.raises(ValueError, match=message) as err:
        validate_site(mutate(make_site()))
    assert "site_x" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_named(bad):
    site = make_site()
    site.x[3, 1, 5] = bad
    with pytest.raises(ValueError, match=r"NaN/inf.*record 3, channel 'ch1'"):
        validate_site(site)


def test_one_class_allowed_when_asked():
    site = make_site(prevalence=0.0)
    assert validate_site(site, require_both_classes=False).y.sum() == 0


def test_stratified_split_is_a_disjoint_partition_keeping_prevalence():
    site = make_site(n=400, prevalence=0.1)
    splits = stratified_split(site, seed=3)
    parts = list(splits.parts().values())
    assert list(splits.parts()) == ["train", "guidance", "tuning", "test"]
    sizes = [len(s.y) for s in parts]
    assert sum(sizes) == 400 and sizes == [280, 40, 40, 40]
    for s in parts:
        assert s.y.mean() == pytest.approx(0.1, abs=0.01)
    # every record lands in exactly one split (the first value of each record is unique)
    rows = np.concatenate([s.x[:, 0, 0] for s in parts])
    assert len(np.unique(rows)) == 400
    assert np.array_equal(np.sort(rows), np.sort(site.x[:, 0, 0]))
    again = stratified_split(site, seed=3)
    assert np.array_equal(again.test.x, splits.test.x)
    other = stratified_split(site, fractions=(0.6, 0.2, 0.1, 0.1), seed=3)
    assert [len(s.y) for s in other.parts().values()] == [240, 80, 40, 40]


def test_small_site_gets_a_record_of_each_class_in_every_split():
    site = make_site(n=24, prevalence=0.2)
    splits = stratified_split(site, seed=0)
    for name, part in splits.parts().items():
        assert set(part.y.tolist()) == {0, 1}, name


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match="four positive numbers"):
        stratified_split(make_site(), fractions=(0.8, 0.1, 0.1))


def test_split_of_tiny_site_names_empty_split():
    site = make_site(n=2, prevalence=0.5)
    with pytest.raises(ValueError, match="site_x.*too small.*split is empty"):
        stratified_split(site)


def test_concat_checks_channels():
    a, b = make_site(name="a"), make_site(name="b", c=2)
    with pytest.raises(ValueError, match="site 'b' has channels"):
        concat_sites([a, b])
    pooled = concat_sites([a, make_site(name="c", seed=1)])
    assert pooled.num_records == 100
