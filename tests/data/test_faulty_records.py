"""PhysioNet 2012 faulty input: the record file and its real line are named, one bad file never
sinks the whole set, and outcome values that are not labels are counted, warned or refused."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tardiff_common.data.registry import load_sites

from .conftest import PHYSIONET_OUTCOMES, PHYSIONET_RECORDS


def _load(folder, **kw):
    kw.setdefault("channels", ("HR",))  # observed in every kept fixture record
    return load_sites("physionet2012", folder, min_site_records=0, cache_dir=None, **kw)


def _stay_ids(sites):
    return sorted(int(i) for s in sites for i in s.meta["stay_ids"])


def _with(record_id: int, data: bytes) -> dict:
    return {**PHYSIONET_RECORDS, record_id: data}


def test_malformed_line_is_named_by_file_and_real_line(physionet_tables):
    # line 9 of record 2 (header = line 1, blank line 8 still counts) has four fields
    bad = PHYSIONET_RECORDS[2].replace(b"00:00,Weight,80\n", b"00:00,Weight,80\n\n03:00,HR,70,extra\n")
    folder = physionet_tables(records=_with(2, bad), as_folder=True)
    with pytest.raises(ValueError, match=r"record file '2\.txt'.*line 9: expected 'hh:mm,Parameter,Value'"):
        _load(folder, on_bad_record="error")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable record file.*2\.txt: line 9"):
        sites = _load(folder)
    assert 2 not in _stay_ids(sites) and {1, 6} <= set(_stay_ids(sites))
    assert sites[0].meta["dropped_total"]["unreadable_record"] == 1
    assert list(sites[0].meta["bad_records"]) == ["2.txt"]


def test_too_few_fields_is_caught_too(physionet_tables):
    bad = PHYSIONET_RECORDS[6] + b"11:00,HR\n"
    folder = physionet_tables(records=_with(6, bad))
    with pytest.raises(ValueError, match=r"set-a/6\.txt.*line \d+: expected"):
        _load(folder, on_bad_record="error")


def test_non_utf8_byte_names_the_file_and_keeps_the_rest(physionet_tables):
    bad = PHYSIONET_RECORDS[1].replace(b"Glucose", b"Gluc\xffose")
    folder = physionet_tables(records=_with(1, bad))
    with pytest.warns(UserWarning, match=r"set-a/1\.txt: line \d+: byte 0xff is not UTF-8"):
        sites = _load(folder)
    assert _stay_ids(sites) == [2, 6]  # record 1 skipped, the set still loads
    with pytest.raises(ValueError, match=r"record file 'set-a/1\.txt'.*0xff is not UTF-8"):
        _load(folder, on_bad_record="error")


@pytest.mark.parametrize("value, shown", [("", "empty"), ("nan", "empty"), ("2", "2")])
def test_invalid_labels_are_counted_and_warned_or_refused(physionet_tables, value, shown):
    folder = physionet_tables()
    outcomes = PHYSIONET_OUTCOMES.astype({"In-hospital_death": object})
    outcomes.loc[outcomes["RecordID"] == 2, "In-hospital_death"] = value
    outcomes.to_csv(folder / "Outcomes-a.txt", index=False)
    with pytest.warns(UserWarning, match=rf"1 record\(s\) with an invalid 'in-hospital_death'.*RecordID 2 = .*{shown}"):
        sites = _load(folder)
    assert 2 not in _stay_ids(sites)
    assert sites[0].meta["dropped_total"]["invalid_label"] == 1
    with pytest.raises(ValueError, match=r"Outcomes-a\.txt.*invalid 'in-hospital_death'"):
        _load(folder, invalid_labels="error")


def test_valid_labels_raise_no_label_warning(physionet_tables):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _load(physionet_tables())
    assert not [w for w in caught if "invalid" in str(w.message)]


def test_unknown_option_values_are_refused(physionet_tables):
    with pytest.raises(ValueError, match="on_bad_record"):
        _load(physionet_tables(), on_bad_record="ignore")
    with pytest.raises(ValueError, match="invalid_labels"):
        _load(physionet_tables(), invalid_labels="keep")


def test_los_without_a_value_is_an_invalid_label(physionet_tables):
    folder = physionet_tables()
    outcomes = PHYSIONET_OUTCOMES.astype({"Length_of_stay": float})
    outcomes.loc[outcomes["RecordID"] == 1, "Length_of_stay"] = np.nan
    pd.DataFrame(outcomes).to_csv(folder / "Outcomes-a.txt", index=False)
    with pytest.warns(UserWarning, match=r"invalid 'length_of_stay'.*RecordID 1"):
        sites = _load(folder, task="los", site_by="all")
    assert 1 not in _stay_ids(sites)
