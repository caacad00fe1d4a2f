"""data.small-sites: sites below data.min-site-records dropped or pooled into one site "other"."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tardiff_common.data.contract import SiteData
from tardiff_common.data.loading import load_sites_for
from tardiff_common.data.small_sites import pool_small_sites
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.config_errors import ConfigError


def _site(name: str, n: int, label: int = 0) -> SiteData:
    x = np.full((n, 2, 4), float(n), dtype=np.float32)
    return SiteData(name=name, x=x, y=np.full(n, label, dtype=np.int64), channels=("a", "b"))


def test_small_sites_pooled_into_other_in_site_order():
    sites = [_site("h1", 5), _site("h2", 2, 1), _site("h3", 9), _site("h4", 3)]
    with pytest.warns(UserWarning, match=r"pooled 2 of 4 site\(s\) with fewer than 4 records \(5 records in all\)"):
        out = pool_small_sites(sites, 4)
    assert [s.name for s in out] == ["h1", "h3", "other"]
    other = out[-1]
    assert other.num_records == 5 and other.meta["pooled_sites"] == {"h2": 2, "h4": 3}
    np.testing.assert_array_equal(other.y, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(other.x[:, 0, 0], [2, 2, 3, 3, 3])


def test_nothing_small_nothing_changes_and_too_small_pool_is_dropped():
    sites = [_site("h1", 5), _site("h2", 6)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pool_small_sites(sites, 5) == sites
    with pytest.warns(UserWarning, match="dropped site 'other'"):
        assert [s.name for s in pool_small_sites([_site("h1", 5), _site("h2", 1)], 5)] == ["h1"]
    with pytest.raises(ValueError, match="no site has at least"), pytest.warns(UserWarning):
        pool_small_sites([_site("h1", 1), _site("h2", 1)], 5)
    with pytest.raises(ValueError, match="already named 'other'"):
        pool_small_sites([_site("other", 5), _site("h2", 1)], 5)


def test_eicu_hospitals_small_sites_drop_or_pool(eicu_tables):
    folder = eicu_tables()  # hospital_10 with the most stays, hospital_20 and hospital_30 with one each
    base = {"data.source": "eicu", "data.path": str(folder), "data.site-by": "hospital", "data.min-site-records": 2}
    with pytest.warns(UserWarning, match="dropped 2 of 3"):
        dropped = load_sites_for(RunConfig().with_overrides(base).data)
    assert [s.name for s in dropped] == ["hospital_10"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the single-class warnings of the one-stay hospitals
        pooled = load_sites_for(RunConfig().with_overrides({**base, "data.small-sites": "pool"}).data)
    assert [s.name for s in pooled] == ["hospital_10", "other"]
    assert pooled[1].meta["pooled_sites"] == {"hospital_20": 1, "hospital_30": 1}
    assert sorted(pooled[1].y.tolist()) == [0, 1]


def test_small_sites_value_is_checked():
    with pytest.raises(ConfigError, match=r"data.small-sites: must be one of \['drop', 'pool'\]"):
        RunConfig().with_overrides({"data.small-sites": "merge"})
