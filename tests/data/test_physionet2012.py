"""PhysioNet 2012 loader: tar.gz / folder fixtures and the real set-a (../shared/data)."""

from __future__ import annotations

import io
import tarfile
import warnings

import numpy as np
import pandas as pd
import pytest

from tardiff_common.data import physionet2012
from tardiff_common.data.registry import load_sites


def _load(folder, **kw):
    kw.setdefault("min_site_records", 0)
    kw.setdefault("cache_dir", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sites("physionet2012", folder, **kw)


def _by_stay(sites):
    out = {}
    for s in sites:
        for i, sid in enumerate(s.meta["stay_ids"]):
            out[int(sid)] = (s.name, s.x[i], s.mask[i], int(s.y[i]))
    return out


@pytest.mark.parametrize("as_folder", [False, True])
def test_fixture_grid_labels_sites(physionet_tables, as_folder):
    sites = _load(physionet_tables(as_folder=as_folder))
    assert [s.name for s in sites] == ["icu1_coronary", "icu2_cardiac_surgery", "icu3_medical"]
    stays = _by_stay(sites)
    assert sorted(stays) == [1, 2, 6]  # 3 no vitals, 4 no outcome, 5 no ICUType
    assert sites[0].meta["dropped_total"] == {"no_site": 1, "no_vitals": 1, "unknown_outcome": 1}
    name, x, m, y = stays[1]
    assert (name, y) == ("icu1_coronary", 1)
    assert x.shape == (6, 48) and np.isfinite(x).all()
    hr, sbp, temp = x[0], x[1], x[4]
    assert np.flatnonzero(m[0]).tolist() == [0, 2]  # 48:00 is outside the grid
    np.testing.assert_allclose(hr[:2], 85.0)  # mean(80, 90)
    np.testing.assert_allclose(hr[2:], 100.0)
    assert np.flatnonzero(m[4]).tolist() == [47]  # -1 at 00:10 = missing
    np.testing.assert_allclose(temp, 37.0)
    assert not m[1].any()  # NISysABP 0 is impossible: never observed -> median of [120]
    np.testing.assert_allclose(sbp, 120.0)
    # Medians over kept records 1, 2, 6: HR [85, 100, 70, 75] -> 80; RespRate [12] -> 12.
    np.testing.assert_allclose(x[5], 12.0)
    assert sites[0].meta["fill_median"]["HR"] == 80.0
    _, x, m, _ = stays[2]
    np.testing.assert_allclose(x[0], 70.0)  # leading gap (hours 0..4) backward filled
    assert np.flatnonzero(m[5]).tolist() == [1]
    assert sites[0].meta["implausible_values"]["NISysABP"] == 1


def test_fixture_los_and_options(physionet_tables):
    folder = physionet_tables()
    stays = _by_stay(_load(folder, task="los", site_by="all", channels=("HR",)))
    # Length_of_stay > 3 days; record 6 has -1 (unknown) and is dropped; with one site
    # "all", record 5 (no ICUType) is kept.
    assert {k: v[3] for k, v in stays.items()} == {1: 1, 2: 0, 5: 1}
    sites = _load(folder, channels=("HR", "NIMAP"), length=12)
    assert sites[0].x.shape[1:] == (2, 12)
    assert _by_stay(sites)[6][2][1].tolist() == [False] * 10 + [True, False]


def test_missing_files_name_the_file(physionet_tables):
    folder = physionet_tables()
    with pytest.raises(ValueError, match=r"set-b\.tar\.gz"):
        _load(folder, sets=("a", "b"))
    (folder / "Outcomes-a.txt").unlink()
    with pytest.raises(ValueError, match=r"Outcomes-a\.txt"):
        _load(folder)


def test_missing_outcome_column_names_it(physionet_tables):
    folder = physionet_tables()
    pd.read_csv(folder / "Outcomes-a.txt").drop(columns=["In-hospital_death"]).to_csv(
        folder / "Outcomes-a.txt", index=False
    )
    with pytest.raises(ValueError, match=r"Outcomes-a\.txt.*In-hospital_death"):
        _load(folder)


def test_truncated_tar_names_the_file(physionet_tables):
    folder = physionet_tables()
    path = folder / "set-a.tar.gz"
    # Enough incompressible records that a cut lands in the middle of the stream.
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for rid in range(1, 200):
            rows = [(f"{h:02d}:00", "HR", float(v)) for h, v in enumerate(rng.uniform(50, 150, 40))]
            data = physionet2012_record(rid, rows)
            info = tarfile.TarInfo(f"set-a/{rid}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"set-a\.tar\.gz"):
        _load(folder)
    path.write_bytes(b"not a tar archive")
    with pytest.raises(ValueError, match=r"set-a\.tar\.gz"):
        _load(folder)


def physionet2012_record(rid, rows):
    lines = ["Time,Parameter,Value", f"00:00,RecordID,{rid}", "00:00,ICUType,3"]
    lines += [f"{t},{p},{v:.3f}" for t, p, v in rows]
    return ("\n".join(lines) + "\n").encode()


def test_crlf_and_blank_lines(physionet_tables):
    records = {
        1: b"Time,Parameter,Value\r\n00:00,RecordID,1\r\n\r\n00:00,ICUType,1\r\n01:00,HR,80\r\n",
        2: b"Time,Parameter,Value\n00:00,RecordID,2\n00:00,ICUType,1\n02:30,HR,90\n\n\n",
    }
    stays = _by_stay(_load(physionet_tables(records=records), channels=("HR",)))
    assert np.flatnonzero(stays[1][2][0]).tolist() == [1]
    assert np.flatnonzero(stays[2][2][0]).tolist() == [2]


# ---------------------------------------------------------------------------------------------
# The real set-a
# ---------------------------------------------------------------------------------------------


def test_set_a_shapes_sites_and_prevalence(physionet_sites, physionet_dir):
    outcomes = pd.read_csv(physionet_dir / "Outcomes-a.txt").set_index("RecordID")
    assert len(outcomes) == 4000
    assert int(outcomes["In-hospital_death"].sum()) == 554  # 13.85 %, the README's 13.9 %
    assert [s.name for s in physionet_sites] == list(physionet2012.ICU_TYPES.values())
    kept = np.concatenate([s.meta["stay_ids"] for s in physionet_sites])
    dropped = physionet_sites[0].meta["dropped_total"]
    assert len(kept) + sum(dropped.values()) == 4000
    for s in physionet_sites:
        assert s.x.shape[1:] == (6, 48) and np.isfinite(s.x).all()
        np.testing.assert_array_equal(s.y, outcomes.loc[s.meta["stay_ids"], "In-hospital_death"])
    positives = sum(int(s.y.sum()) for s in physionet_sites)
    assert positives == int(outcomes.loc[kept, "In-hospital_death"].sum())
    assert abs(positives / len(kept) - 0.139) < 0.002


def test_set_a_mask_matches_the_record_files(physionet_sites, physionet_dir):
    """Parse 25 record files independently (csv text) and compare mask and bin means."""
    by_id = {}
    for s in physionet_sites:
        for i, sid in enumerate(s.meta["stay_ids"]):
            by_id[int(sid)] = (s, i)
    checked = 0
    with tarfile.open(physionet_dir / "set-a.tar.gz") as tar:
        for member in tar:
            if not member.name.endswith(".txt"):
                continue
            frame = pd.read_csv(tar.extractfile(member))
            rid = int(frame.loc[frame.Parameter == "RecordID", "Value"].iloc[0])
            if rid not in by_id:
                continue
            s, i = by_id[rid]
            hours = frame.Time.str.slice(0, 2).astype(int)
            for ci, ch in enumerate(s.channels):
                low, high = physionet2012.VITAL_RANGES[ch]
                sel = (frame.Parameter == ch) & frame.Value.between(low, high) & (hours < 48)
                want = frame[sel].assign(h=hours[sel]).groupby("h").Value.mean()
                assert np.flatnonzero(s.mask[i, ci]).tolist() == want.index.tolist(), (rid, ch)
                np.testing.assert_allclose(s.x[i, ci, want.index], want.to_numpy(), rtol=1e-5)
            checked += 1
            if checked == 25:
                break
    assert checked == 25


def test_set_a_cached_load_reads_no_record_and_is_identical(physionet_sites, physionet_dir, session_cache,
                                                             monkeypatch):
    def no_parsing(*args, **kwargs):
        raise AssertionError("the cached load parsed the records again")

    monkeypatch.setattr(physionet2012, "read_records", no_parsing)
    again = _load(physionet_dir, cache_dir=session_cache)
    assert [s.name for s in again] == [s.name for s in physionet_sites]
    for a, b in zip(again, physionet_sites, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.meta["stay_ids"], b.meta["stay_ids"])
