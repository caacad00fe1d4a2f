"""MIMIC-III loader: fixtures in the real schema (upper-case names, split chartevents) and the
real demo (../shared/data/mimic3_demo)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tardiff_common.data import mimic3
from tardiff_common.data.registry import load_sites


def _load(folder, **kw):
    kw.setdefault("min_site_records", 0)
    kw.setdefault("cache_dir", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sites("mimic3", folder, **kw)


def _by_stay(sites):
    out = {}
    for s in sites:
        for i, sid in enumerate(s.meta["stay_ids"]):
            out[int(sid)] = (s.name, s.x[i], s.mask[i], int(s.y[i]))
    return out


def test_fixture_grid_units_and_labels(mimic_tables):
    sites = _load(mimic_tables())
    assert [s.name for s in sites] == ["MICU", "SICU"]  # CCU's only stay has no vitals in 24 h
    assert sites[0].channels == mimic3.DEFAULT_CHANNELS
    stays = _by_stay(sites)
    assert sorted(stays) == [100, 101]  # 102: unknown outcome, 103: no vitals
    name, x, m, y = stays[100]
    assert (name, y) == ("MICU", 1)
    assert x.shape == (7, 24) and np.isfinite(x).all()
    hr, temp, spo2 = x[0], x[5], x[6]
    assert np.flatnonzero(m[0]).tolist() == [0]  # 85 = mean(80, 90); hour 24, pre-intime, error rows out
    np.testing.assert_allclose(hr, 85.0)
    assert np.flatnonzero(m[5]).tolist() == [1]
    np.testing.assert_allclose(temp, 37.2, rtol=1e-6)  # mean(98.6 °F -> 37.0 °C, 37.4 °C)
    assert np.flatnonzero(m[6]).tolist() == [23]
    np.testing.assert_allclose(spo2, 95.0)
    assert not m[4].any()  # RR 0 is impossible: never observed -> source median
    np.testing.assert_allclose(x[4], 16.0)
    name, x, m, y = stays[101]
    assert (name, y) == ("SICU", 0)
    assert np.flatnonzero(m[1]).tolist() == [2] and x[1, 0] == 120.0  # SBP backward filled
    assert not m[5].any() and np.allclose(x[5], 37.2)  # Temp never charted: source median
    meta = sites[0].meta
    assert meta["dropped_total"] == {"no_vitals": 1, "unknown_outcome": 1}
    assert meta["implausible_values"]["RR"] == 1


def test_fixture_los_and_all_sites(mimic_tables):
    sites = _load(mimic_tables(), task="los", site_by="all")
    assert [s.name for s in sites] == ["all"]
    stays = _by_stay(sites)
    assert {k: v[3] for k, v in stays.items()} == {100: 1, 101: 0, 102: 1}  # los > 3 days


def test_fixture_channels_and_length(mimic_tables):
    sites = _load(mimic_tables(), channels=("HR", "Temp"), length=2)
    stays = _by_stay(sites)
    assert stays[100][1].shape == (2, 2)
    assert 101 in stays and stays[101][2][0].tolist() == [True, False]
    with pytest.raises(ValueError, match="unknown channel"):
        _load(mimic_tables(), channels=("HR", "GCS"))


def test_single_chartevents_file_lower_case(mimic_tables):
    folder = mimic_tables()
    part1 = pd.read_csv(folder / "CHARTEVENTS_1.csv.gz")
    part2 = pd.read_csv(folder / "CHARTEVENTS_2.csv.gz")
    (folder / "CHARTEVENTS_1.csv.gz").unlink()
    (folder / "CHARTEVENTS_2.csv.gz").unlink()
    both = pd.concat([part1, part2])
    both.columns = [c.lower() for c in both.columns]
    both.to_csv(folder / "chartevents.csv", index=False)
    a = _by_stay(_load(folder))
    assert sorted(a) == [100, 101]
    np.testing.assert_allclose(a[100][1][0], 85.0)


def test_missing_tables_and_columns(mimic_tables):
    folder = mimic_tables()
    (folder / "ADMISSIONS.csv").unlink()
    with pytest.raises(ValueError, match=r"admissions\.csv"):
        _load(folder)
    folder = mimic_tables(drop_event_columns=("VALUENUM",))
    with pytest.raises(ValueError, match=r"CHARTEVENTS_1\.csv\.gz.*valuenum"):
        _load(folder)
    for p in folder.glob("CHARTEVENTS*"):
        p.unlink()
    with pytest.raises(ValueError, match=r"chartevents\.csv"):
        _load(folder)


def test_truncated_chartevents_names_the_file(mimic_tables):
    folder = mimic_tables()
    path = folder / "CHARTEVENTS_2.csv.gz"
    rows = pd.DataFrame(
        {
            "ICUSTAY_ID": 101,
            "ITEMID": 211,
            "CHARTTIME": "2100-02-01 13:00:00",
            "VALUENUM": np.arange(30000) % 100 + 50,
            "ERROR": 0,
        }
    )
    rows.to_csv(path, index=False, compression="gzip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"CHARTEVENTS_2\.csv\.gz"):
        _load(folder)


# ---------------------------------------------------------------------------------------------
# The real MIMIC-III demo
# ---------------------------------------------------------------------------------------------


def test_demo_shapes_sites_and_labels(mimic3_sites, mimic3_demo_dir):
    icu = pd.read_csv(mimic3_demo_dir / "icustays.csv.gz")
    adm = pd.read_csv(mimic3_demo_dir / "admissions.csv.gz")
    assert {s.name for s in mimic3_sites} == set(icu.first_careunit.unique())
    units = icu.first_careunit.value_counts().to_dict()
    for s in mimic3_sites:
        assert s.x.shape[1:] == (7, 24) and np.isfinite(s.x).all()
        assert s.num_records + sum(s.meta["dropped"].values()) == units[s.name]
    kept = np.concatenate([s.meta["stay_ids"] for s in mimic3_sites])
    assert len(kept) + sum(mimic3_sites[0].meta["dropped_total"].values()) == len(icu) == 136
    flag = icu.merge(adm, on="hadm_id").set_index("icustay_id").hospital_expire_flag
    assert sum(int(s.y.sum()) for s in mimic3_sites) == int(flag.loc[kept].sum())
    for s in mimic3_sites:
        np.testing.assert_array_equal(s.y, flag.loc[s.meta["stay_ids"]].to_numpy())


def test_demo_mask_matches_chartevents(mimic3_sites, mimic3_demo_dir):
    """Independent pandas computation of the observed (stay, channel, hour) cells."""
    icu = pd.read_csv(mimic3_demo_dir / "icustays.csv.gz", parse_dates=["intime"])
    ev = pd.concat(
        pd.read_csv(p, usecols=["icustay_id", "itemid", "charttime", "valuenum", "error"])
        for p in sorted(mimic3_demo_dir.glob("chartevents_*.csv.gz"))
    )
    item_to_ch = {i: c for c, ids in mimic3.ITEMIDS.items() for i in ids}
    ev = ev[ev.itemid.isin(item_to_ch) & (ev.error.fillna(0) != 1)].dropna(subset=["valuenum"])
    ev = ev.merge(icu[["icustay_id", "intime"]], on="icustay_id")
    ev["hour"] = np.floor((pd.to_datetime(ev.charttime) - ev.intime) / pd.Timedelta(hours=1))
    ev["channel"] = ev.itemid.map(item_to_ch)
    ev["value"] = np.where(ev.itemid.isin(mimic3.FAHRENHEIT_ITEMIDS), (ev.valuenum - 32) * 5 / 9, ev.valuenum)
    lo = ev.channel.map({c: r[0] for c, r in mimic3.VITAL_RANGES.items()})
    hi = ev.channel.map({c: r[1] for c, r in mimic3.VITAL_RANGES.items()})
    ev = ev[(ev.hour >= 0) & (ev.hour < 24) & (ev.value >= lo) & (ev.value <= hi)]
    means = ev.groupby(["icustay_id", "channel", "hour"]).value.mean()
    for s in mimic3_sites:
        for i, sid in enumerate(s.meta["stay_ids"]):
            for ci, ch in enumerate(s.channels):
                try:
                    want = means.loc[(sid, ch)]
                except KeyError:
                    want = pd.Series(dtype=float)
                hours = want.index.astype(int).tolist()
                assert np.flatnonzero(s.mask[i, ci]).tolist() == hours, (sid, ch)
                np.testing.assert_allclose(s.x[i, ci, hours], want.to_numpy(), rtol=1e-5)
