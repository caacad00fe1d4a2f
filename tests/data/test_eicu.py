"""eICU loaders: full-schema vitalPeriodic path on fixtures, YAIB hourly extract on fixtures and
on the real demo (../shared/data/eicu_demo)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tardiff_common.data import eicu
from tardiff_common.data.contract import validate_site
from tardiff_common.data.registry import load_sites


def _load(folder, source="eicu", **kw):
    kw.setdefault("min_site_records", 0)
    kw.setdefault("cache_dir", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sites(source, folder, **kw)


def _by_stay(sites):
    """{stay_id: (site name, x [C, L], mask [C, L], y)}."""
    out = {}
    for s in sites:
        for i, sid in enumerate(s.meta["stay_ids"]):
            out[int(sid)] = (s.name, s.x[i], s.mask[i], int(s.y[i]))
    return out


# ---------------------------------------------------------------------------------------------
# (a) Full schema: vitalPeriodic, 5-minute bins
# ---------------------------------------------------------------------------------------------


def test_vitalperiodic_binning_averaging_ranges_and_filling(eicu_tables):
    sites = _load(eicu_tables(), site_by="hospital")
    assert [s.name for s in sites] == ["hospital_10", "hospital_20", "hospital_30"]
    for s in sites:
        assert s.x.shape[1:] == (3, 288) and s.x.dtype == np.float32
        assert s.channels == ("heartrate", "respiration", "sao2")
        assert np.isfinite(s.x).all()
    stays = _by_stay(sites)
    assert sorted(stays) == [1, 2, 4, 6]  # 3: unknown outcome, 5: no vitals in the window

    _, x, m, y = stays[1]
    assert y == 1
    hr, rr, sao2 = x
    # HR: bin 0 = mean(80, 90); 400 (bin 2) is impossible; bin 4 = 100; bin 287 = 60;
    # offsets -5 and 1440 lie outside [0, 1440).
    assert np.flatnonzero(m[0]).tolist() == [0, 4, 287]
    np.testing.assert_allclose(hr[:4], 85.0)
    np.testing.assert_allclose(hr[4:287], 100.0)
    assert hr[287] == 60.0
    # RR: bin 0 = 12, bin 2 = 15 (the 30 at offsets -5 / 1440 are outside the window).
    assert np.flatnonzero(m[1]).tolist() == [0, 2]
    np.testing.assert_allclose(rr[:2], 12.0)
    np.testing.assert_allclose(rr[2:], 15.0)
    # SpO2: bin 0 = mean(95, 97), forward filled to the end.
    assert np.flatnonzero(m[2]).tolist() == [0]
    np.testing.assert_allclose(sao2, 96.0)

    # Medians over the observed bins of the kept stays (1, 2, 4, 6):
    # HR [85, 100, 60, 70, 75] -> 75; RR [12, 15, 20, 18] -> 16.5; SpO2 [96, 99, 100] -> 99.
    assert sites[0].meta["fill_median"] == {"heartrate": 75.0, "respiration": 16.5, "sao2": 99.0}
    _, x, m, _ = stays[2]
    np.testing.assert_allclose(x[0], 70.0)  # leading gap (bins 0..5) backward filled
    assert np.flatnonzero(m[0]).tolist() == [6]
    assert not m[1].any()
    np.testing.assert_allclose(x[1], 16.5)  # RR never observed -> source median
    assert np.flatnonzero(m[2]).tolist() == [20]
    np.testing.assert_allclose(x[2], 99.0)

    _, x, m, _ = stays[4]  # HR 0 and SpO2 30 are impossible: never observed
    assert not m[0].any() and not m[2].any()
    np.testing.assert_allclose(x[0], 75.0)
    np.testing.assert_allclose(x[2], 99.0)
    _, x, m, _ = stays[6]
    assert m[:, 0].all() and x[2, 0] == 100.0  # the range limits are inclusive
    assert sites[0].meta["implausible_values"] == {"heartrate": 2, "respiration": 0, "sao2": 1}


def test_vitalperiodic_drops_are_counted(eicu_tables):
    sites = _load(eicu_tables(), site_by="hospital")
    by_name = {s.name: s for s in sites}
    assert by_name["hospital_10"].meta["dropped"] == {"unknown_outcome": 1}
    assert by_name["hospital_20"].meta["dropped"] == {"no_vitals": 1}
    assert sites[0].meta["dropped_total"] == {"no_vitals": 1, "unknown_outcome": 1}


def test_vitalperiodic_mask_marks_exactly_the_observed_bins(eicu_tables, eicu_vital_rows):
    """Independent check: mask == the bins that hold a plausible value; x equals their mean there."""
    sites = _load(eicu_tables(), site_by="hospital")
    vit = pd.DataFrame(eicu_vital_rows, columns=["stay", "offset", "heartrate", "respiration", "sao2"])
    stays = _by_stay(sites)
    for ci, ch in enumerate(("heartrate", "respiration", "sao2")):
        low, high = eicu.VITAL_RANGES[ch]
        ok = vit[ch].between(low, high) & (vit.offset >= 0) & (vit.offset < 1440)
        expected = vit[ok].assign(bin=vit.offset // 5).groupby(["stay", "bin"])[ch].mean()
        for sid, (_, x, m, _) in stays.items():
            want = expected.get(sid, pd.Series(dtype=float))
            assert np.flatnonzero(m[ci]).tolist() == sorted(int(b) for b in want.index)
            np.testing.assert_allclose(x[ci][m[ci]], want.sort_index().to_numpy(), rtol=1e-6)


def test_vitalperiodic_chunked_read_equals_one_pass(eicu_tables):
    folder = eicu_tables()
    whole = _load(folder, site_by="hospital")
    chunked = _load(folder, site_by="hospital", chunksize=2)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_vitalperiodic_lower_case_plain_csv_and_los_and_region(eicu_tables, tmp_path):
    folder = eicu_tables(tmp_path / "plain", vital_name="vitalperiodic.csv")
    sites = _load(folder, task="los", site_by="region")
    assert [s.name for s in sites] == ["Midwest", "South", "unknown"]
    stays = _by_stay(sites)
    # los: unitdischargeoffset > 4320 min; stay 3 (empty status) is kept for los.
    assert {k: v[3] for k, v in stays.items()} == {1: 1, 2: 0, 3: 0, 4: 1, 6: 0}
    assert stays[6][0] == "unknown"  # hospital 30 has an empty region
    assert sites[0].meta["task"] == "los"


def test_vitalperiodic_unknown_status_alive(eicu_tables):
    stays = _by_stay(_load(eicu_tables(), site_by="hospital", unknown_status="alive"))
    assert stays[3][3] == 0


def test_vitalperiodic_length_option(eicu_tables):
    sites = _load(eicu_tables(), site_by="hospital", length=10)  # first 50 minutes only
    assert all(s.x.shape[2] == 10 for s in sites)
    assert 4 not in _by_stay(sites)  # its only plausible value (offset 50) is in bin 10


def test_missing_vitalperiodic_names_the_file(eicu_tables):
    folder = eicu_tables()
    (folder / "vitalPeriodic.csv.gz").unlink()
    with pytest.raises(ValueError, match=r"vitalPeriodic\.csv"):
        _load(folder)


def test_missing_patient_table_names_the_file(eicu_tables):
    folder = eicu_tables()
    (folder / "patient.csv.gz").unlink()
    with pytest.raises(ValueError, match=r"patient\.csv"):
        _load(folder)


def test_missing_vital_column_names_column_and_file(eicu_tables):
    folder = eicu_tables(drop_vital_columns=("sao2",))
    with pytest.raises(ValueError, match=r"vitalPeriodic\.csv\.gz.*sao2"):
        _load(folder)


def test_missing_patient_column_names_column_and_file(eicu_tables):
    folder = eicu_tables(drop_patient_columns=("hospitaldischargestatus",))
    with pytest.raises(ValueError, match=r"patient\.csv\.gz.*hospitaldischargestatus"):
        _load(folder)


def test_truncated_gzip_names_the_file(eicu_tables):
    folder = eicu_tables()
    path = folder / "vitalPeriodic.csv.gz"
    big = pd.DataFrame(
        {
            "patientunitstayid": 1,
            "observationoffset": np.arange(20000) % 1440,
            "heartrate": 80.0,
            "respiration": 12.0,
            "sao2": 97.0,
        }
    )
    big.to_csv(path, index=False, compression="gzip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"vitalPeriodic\.csv\.gz"):
        _load(folder)


def test_not_gzip_names_the_file(eicu_tables):
    folder = eicu_tables()
    (folder / "patient.csv.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match=r"patient\.csv\.gz"):
        _load(folder)


def test_all_stays_without_vitals_is_an_error(eicu_tables):
    folder = eicu_tables(vitals=[(1, 2000, 80, 12, 95)])
    with pytest.raises(ValueError, match="no usable stay"):
        _load(folder)


def test_bad_site_by_and_unknown_status(eicu_tables):
    folder = eicu_tables()
    with pytest.raises(ValueError, match="site_by"):
        _load(folder, site_by="ward")
    with pytest.raises(ValueError, match="unknown_status"):
        _load(folder, unknown_status="maybe")


def test_load_eicu_drops_small_sites_with_warning(eicu_tables):
    with pytest.warns(UserWarning, match="hospital_20"):
        sites = eicu.load_eicu(eicu_tables(), site_by="hospital", min_site_records=2)
    assert [s.name for s in sites] == ["hospital_10"]
    assert sites[0].meta["dropped_sites"] == {"hospital_20": 1, "hospital_30": 1}


# ---------------------------------------------------------------------------------------------
# (b) YAIB hourly extract: fixtures
# ---------------------------------------------------------------------------------------------


def test_yaib_fixture_grid_labels_and_fill(yaib_tables):
    folder = yaib_tables()
    sites = _load(folder, "eicu_yaib")
    assert [s.name for s in sites] == ["Midwest", "South", "unknown"]
    assert sites[0].channels == eicu.YAIB_DEFAULT_CHANNELS
    stays = _by_stay(sites)
    assert sorted(stays) == [1, 2, 4]  # 3: empty discharge status
    assert {k: v[3] for k, v in stays.items()} == {1: 1, 2: 0, 4: 0}
    _, x, m, _ = stays[1]
    assert x.shape == (7, 24)
    assert np.flatnonzero(m[0]).tolist() == [0, 3]  # hr 0 at hour 5 dropped, hour 24 outside
    np.testing.assert_allclose(x[0, :3], 80.0)
    np.testing.assert_allclose(x[0, 3:], 90.0)
    np.testing.assert_allclose(x[6], 37.5)  # temp: one value at hour 2, back- and forward-filled
    assert not m[1].any()
    np.testing.assert_allclose(x[1], 19.0)  # resp median of stays 1, 2, 4: [18, 20]
    assert sites[0].meta["fill_median"]["o2sat"] == 99.0  # stay 3 (dropped) does not count
    assert sites[0].meta["implausible_values"]["hr"] == 1
    assert {s.name: s.meta["dropped"] for s in sites}["South"] == {"unknown_outcome": 1}


def test_yaib_fixture_options(yaib_tables):
    folder = yaib_tables()
    sites = _load(folder, "eicu_yaib", length=25, channels=("hr", "temp"), site_by="hospital")
    stays = _by_stay(sites)
    assert sites[0].x.shape[1:] == (2, 25)
    assert np.flatnonzero(stays[1][2][0]).tolist() == [0, 3, 24]
    assert 4 not in stays  # only sbp, which is not among the channels -> no vitals
    alive = _by_stay(_load(folder, "eicu_yaib", unknown_status="alive"))
    assert alive[3][3] == 0


def test_yaib_los_extract(yaib_tables):
    folder = yaib_tables("los")
    stays = _by_stay(_load(folder, "eicu_yaib", task="los"))
    assert {k: v[3] for k, v in stays.items()} == {1: 1, 2: 0, 3: 0, 4: 1}
    with pytest.raises(ValueError, match=r"mortality24[/\\]dyn\.parquet"):
        _load(folder, "eicu_yaib", task="mortality")


def test_yaib_missing_column_names_column_and_file(yaib_tables):
    folder = yaib_tables(drop_columns=("temp",))
    with pytest.raises(ValueError, match=r"dyn\.parquet.*temp"):
        _load(folder, "eicu_yaib")


def test_yaib_corrupt_parquet_names_the_file(yaib_tables):
    folder = yaib_tables()
    (folder / "yaib_hourly" / "mortality24" / "dyn.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ValueError, match=r"dyn\.parquet"):
        _load(folder, "eicu_yaib")


def test_yaib_missing_hospital_table_for_regions(yaib_tables):
    folder = yaib_tables()
    (folder / "hospital.csv.gz").unlink()
    with pytest.raises(ValueError, match=r"hospital\.csv"):
        _load(folder, "eicu_yaib")
    assert _load(folder, "eicu_yaib", site_by="hospital")  # not needed for hospital sites


# ---------------------------------------------------------------------------------------------
# (b) YAIB hourly extract: the real eICU demo
# ---------------------------------------------------------------------------------------------

README_REGIONS = {"Midwest": 430, "South": 416, "West": 305, "unknown": 119, "Northeast": 97}


def _demo_stays(eicu_demo_dir):
    dyn = pd.read_parquet(eicu_demo_dir / "yaib_hourly" / "mortality24" / "dyn.parquet")
    pat = pd.read_csv(eicu_demo_dir / "patient.csv.gz")
    hosp = pd.read_csv(eicu_demo_dir / "hospital.csv.gz")
    stays = pat[pat.patientunitstayid.isin(dyn.stay_id.unique())].merge(hosp, on="hospitalid", how="left")
    return dyn, stays


def test_yaib_demo_shapes_sites_and_labels(yaib_sites, eicu_demo_dir):
    dyn, stays = _demo_stays(eicu_demo_dir)
    assert len(stays) == 1367
    assert {s.name for s in yaib_sites} == set(README_REGIONS)
    for s in yaib_sites:
        assert s.x.shape[1:] == (7, 24) and s.mask.shape == s.x.shape
        assert np.isfinite(s.x).all()
        validate_site(s)  # every region has both classes
    # Region sizes before any min-size dropping: kept records + dropped stays of that region.
    sizes = {s.name: s.num_records + sum(s.meta["dropped"].values()) for s in yaib_sites}
    assert sizes == README_REGIONS
    # Labels: in-hospital death from hospitaldischargestatus, counted from the data.
    expired = int((stays.hospitaldischargestatus == "Expired").sum())
    empty = int(stays.hospitaldischargestatus.isna().sum())
    assert (expired, empty) == (127, 16)
    assert round(expired / len(stays), 3) == 0.093  # the README's 9.3 %
    assert sum(int(s.y.sum()) for s in yaib_sites) == expired
    total = yaib_sites[0].meta["dropped_total"]
    assert total == {"no_vitals": 1, "unknown_outcome": 16}
    assert sum(s.num_records for s in yaib_sites) == 1367 - 17


def test_yaib_demo_unknown_status_alive_matches_readme(eicu_demo_dir, session_cache):
    sites = _load(eicu_demo_dir, "eicu_yaib", unknown_status="alive", cache_dir=session_cache)
    n = sum(s.num_records for s in sites)
    pos = sum(int(s.y.sum()) for s in sites)
    assert (n, pos) == (1366, 127)  # 1,367 stays minus the one without vitals
    sizes = {s.name: s.num_records + sum(s.meta["dropped"].values()) for s in sites}
    assert sizes == README_REGIONS


def test_yaib_demo_mask_and_values_match_the_parquet(yaib_sites, eicu_demo_dir):
    """mask is True exactly where dyn.parquet holds a plausible value in hours 0..23."""
    dyn, _ = _demo_stays(eicu_demo_dir)
    dyn = dyn[dyn.time < pd.Timedelta(hours=24)]
    hour = (dyn.time / pd.Timedelta(hours=1)).astype(int).to_numpy()
    for s in yaib_sites:
        pos = pd.Index(s.meta["stay_ids"]).get_indexer(dyn.stay_id)
        sel = pos >= 0
        for ci, ch in enumerate(s.channels):
            low, high = eicu.YAIB_RANGES[ch]
            v = dyn[ch].to_numpy()
            ok = sel & np.isfinite(v) & (v >= low) & (v <= high)
            expected = np.zeros(s.mask[:, ci].shape, dtype=bool)
            expected[pos[ok], hour[ok]] = True
            np.testing.assert_array_equal(s.mask[:, ci], expected, err_msg=f"{s.name} {ch}")
            np.testing.assert_allclose(s.x[pos[ok], ci, hour[ok]], v[ok], rtol=1e-6)


def test_yaib_demo_los_extract(eicu_demo_dir, session_cache):
    sites = _load(eicu_demo_dir, "eicu_yaib", task="los", cache_dir=session_cache)
    n = sum(s.num_records + sum(s.meta["dropped"].values()) for s in sites)
    assert n == 2267
    assert sites[0].meta["extract"] == "los"
