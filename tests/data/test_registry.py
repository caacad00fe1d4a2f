"""load_sites / summarize_sites: choices, min-size dropping, single-class flags, contract."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tardiff_common.data.contract import SiteData, validate_site
from tardiff_common.data.grid import fill_gaps
from tardiff_common.data.loading import load_sites_for
from tardiff_common.data.registry import SOURCES, Source, load_sites, register
from tardiff_common.data.registry import source as registered_source
from tardiff_common.data.sites import drop_small_sites, summarize_sites
from tardiff_common.data.synthetic import SyntheticICUConfig, generate_hospitals
from tardiff_common.pipeline.config import DataConfig


def test_sources():
    assert SOURCES == ("eicu", "eicu_yaib", "mimic3", "physionet2012", "synthetic")


def test_synthetic_registers_like_any_other_source():
    config = DataConfig(source="synthetic", num_hospitals=2, size_scale=0.1, data_seed=3)
    sites = registered_source("synthetic").sites_for(config)
    expected = generate_hospitals(SyntheticICUConfig(num_hospitals=2, size_scale=0.1, seed=3))
    assert [s.name for s in sites] == [s.name for s in expected] == [s.name for s in load_sites_for(config)]
    assert all(np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) for a, b in zip(sites, expected, strict=True))
    with pytest.raises(ValueError, match="'synthetic' is not read from a folder"):
        load_sites("synthetic", ".")
    with pytest.raises(ValueError, match="already registered"):
        register(Source("synthetic", load="tardiff_common.data.synthetic:sites_for"))


def test_unknown_source_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'mimic4'.*eicu.*eicu_yaib.*mimic3.*physionet2012"):
        load_sites("mimic4", tmp_path)


def test_unknown_task_and_option(eicu_tables):
    folder = eicu_tables()
    with pytest.raises(ValueError, match="unknown task 'sepsis'"):
        load_sites("eicu", folder, task="sepsis", cache_dir=None)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sets'\]"):
        load_sites("eicu", folder, sets=("a",), cache_dir=None)


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_sites("mimic3", tmp_path / "nowhere", cache_dir=None)


def test_small_sites_dropped_with_warning_and_recorded(eicu_tables):
    folder = eicu_tables()
    with pytest.warns(UserWarning, match=r"dropped 2 of 3 site\(s\).*hospital_20 \(1\), hospital_30 \(1\)"):
        sites = load_sites("eicu", folder, site_by="hospital", min_site_records=2, cache_dir=None)
    assert [s.name for s in sites] == ["hospital_10"]
    assert sites[0].meta["dropped_sites"] == {"hospital_20": 1, "hospital_30": 1}
    with pytest.raises(ValueError, match="no site has at least min_site_records=50"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_sites("eicu", folder, site_by="hospital", min_site_records=50, cache_dir=None)


def test_single_class_site_is_kept_warned_and_flagged(eicu_tables):
    with pytest.warns(UserWarning, match=r"single class.*hospital_20 \(only 0\).*hospital_30 \(only 1\)"):
        sites = load_sites("eicu", eicu_tables(), site_by="hospital", min_site_records=0, cache_dir=None)
    assert [s.name for s in sites] == ["hospital_10", "hospital_20", "hospital_30"]
    table = summarize_sites(sites)
    lines = table.splitlines()
    assert lines[0].startswith("| site | records | positives | prevalence | miss heartrate")
    row20 = next(line for line in lines if line.startswith("| hospital_20 "))
    assert row20.rstrip().endswith("only class 0 |")
    row10 = next(line for line in lines if line.startswith("| hospital_10 "))
    assert "only class" not in row10
    assert any(line.startswith("| **all** | 4 | 2 | 0.500") for line in lines)


def test_every_returned_site_meets_the_contract(eicu_tables, yaib_tables, mimic_tables, physionet_tables):
    cases = [
        ("eicu", eicu_tables()),
        ("eicu_yaib", yaib_tables()),
        ("mimic3", mimic_tables()),
        ("physionet2012", physionet_tables()),
    ]
    for source, folder in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = load_sites(source, folder, min_site_records=0, cache_dir=None)
        for s in sites:
            validate_site(s, require_both_classes=False)
            assert s.x.dtype == np.float32 and s.y.dtype == np.int64 and s.mask.dtype == bool
            assert np.isfinite(s.x).all()
            assert s.meta["source"] == source and len(s.meta["stay_ids"]) == s.num_records
            for key in ("task", "dropped", "dropped_total", "dropped_sites", "fill_median"):
                assert key in s.meta, (source, key)


def test_fill_gaps_rules():
    nan = np.nan
    values = np.array(
        [[[nan, 1.0, nan, 3.0, nan], [nan] * 5], [[nan, nan, nan, nan, 7.0], [2.0, nan, nan, nan, nan]]],
        dtype=np.float32,
    )
    x, mask, medians = fill_gaps(values, channels=("a", "b"))
    np.testing.assert_array_equal(mask, np.isfinite(values))
    np.testing.assert_array_equal(x[0, 0], [1, 1, 1, 3, 3])  # backward fill, then forward fill
    np.testing.assert_array_equal(x[1, 0], [7, 7, 7, 7, 7])
    np.testing.assert_array_equal(x[0, 1], [2, 2, 2, 2, 2])  # never observed: median of b
    assert medians == {"a": 3.0, "b": 2.0}
    np.testing.assert_array_equal(x[mask], values[mask])  # observed values untouched
    with pytest.raises(ValueError, match="channel 'b' is never observed"):
        fill_gaps(values[:1], channels=("a", "b"), source="src")


def test_drop_small_sites_direct():
    def site(name, n):
        return SiteData(name=name, x=np.zeros((n, 1, 2), np.float32), y=np.arange(n) % 2, channels=("a",))

    with pytest.warns(UserWarning, match=r"tiny \(2\)"):
        kept = drop_small_sites([site("big", 10), site("tiny", 2)], 5, source="demo")
    assert [s.name for s in kept] == ["big"] and kept[0].meta["dropped_sites"] == {"tiny": 2}


def test_summary_on_real_sources(yaib_sites, mimic3_sites, physionet_sites):
    for sites in (yaib_sites, mimic3_sites, physionet_sites):
        table = summarize_sites(sites)
        assert all(f"| {s.name} | {s.num_records} |" in table for s in sites)


def test_real_sources_with_default_minimum(eicu_demo_dir, mimic3_demo_dir, session_cache):
    """Default min_site_records=20: the small MIMIC demo care units are dropped, loudly."""
    with pytest.warns(UserWarning, match=r"mimic3: dropped 3 of 5 site\(s\).*CCU \(19\).*CSRU \(6\).*TSICU \(10\)"):
        sites = load_sites("mimic3", mimic3_demo_dir, cache_dir=session_cache)
    assert [s.name for s in sites] == ["MICU", "SICU"]
    assert sites[0].meta["dropped_sites"] == {"CCU": 19, "CSRU": 6, "TSICU": 10}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sites = load_sites("eicu_yaib", eicu_demo_dir, cache_dir=session_cache)
    assert len(sites) == 5 and not [w for w in caught if "dropped" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        by_hospital = load_sites(
            "eicu_yaib", eicu_demo_dir, site_by="hospital", min_site_records=10, cache_dir=session_cache
        )
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("eicu_yaib: dropped") for m in messages)
    assert any("single class" in m for m in messages)  # small hospitals without a death
    assert all(s.num_records >= 10 for s in by_hospital)
