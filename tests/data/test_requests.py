"""data.length and data.channels reach every loader: honoured, or refused naming the key (issue 15
case 12, issue 13 channel selection)."""

from __future__ import annotations

import warnings

import pytest

from tardiff_common.data import physionet2012
from tardiff_common.data.loading import load_sites_for, parse_channels
from tardiff_common.pipeline.config import DataConfig


def _config(folder, **kw) -> DataConfig:
    return DataConfig(source="physionet2012", path=str(folder), min_site_records=1, **kw)


def _load(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sites_for(config)


def test_length_and_channels_reach_the_physionet_loader(physionet_tables):
    folder = physionet_tables()
    sites = _load(_config(folder, length=12, channels="HR,NIMAP"))
    assert {s.x.shape[1:] for s in sites} == {(2, 12)}
    assert sites[0].channels == ("HR", "NIMAP")
    sites = _load(_config(folder))  # 0 / "" = the source's own
    assert {s.x.shape[1:] for s in sites} == {(len(physionet2012.DEFAULT_CHANNELS), 48)}


def test_length_the_records_cannot_hold_is_refused(physionet_tables):
    with pytest.raises(ValueError, match=r"data\.length=288 cannot be honoured.*first 48 h"):
        _load(_config(physionet_tables(), length=288))


def test_unknown_variable_is_refused_by_name_listing_the_available(physionet_tables):
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['Spo2'\] in data\.channels; available: .*GCS.*Lactate"):
        _load(_config(physionet_tables(), channels="HR,Spo2"))


def test_more_physionet_variables_with_masks(physionet_tables):
    sites = _load(_config(physionet_tables(), channels="HR,Glucose"))
    glucose = {int(i): m[1] for s in sites for i, m in zip(s.meta["stay_ids"], s.mask, strict=True)}
    assert glucose[1].tolist() == [False] * 3 + [True] + [False] * 44  # 03:00 Glucose 120


def test_synthetic_refuses_other_channels_and_honours_length():
    with pytest.raises(ValueError, match=r"data\.channels='HR' cannot be honoured by the synthetic source"):
        load_sites_for(DataConfig(channels="HR"))
    sites = load_sites_for(DataConfig(length=16, size_scale=0.1))
    assert sites[0].length == 16
    assert load_sites_for(DataConfig(size_scale=0.1))[0].length == 48


def test_yaib_variables_and_horizon(eicu_demo_dir):
    base = dict(source="eicu_yaib", path=str(eicu_demo_dir), min_site_records=1)
    with pytest.raises(ValueError, match=r"data\.length=48 cannot be honoured.*covers 25 hourly steps"):
        _load(DataConfig(**base, length=48))
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['gcs'\] in data\.channels.*lact"):
        _load(DataConfig(**base, channels="hr,gcs"))
    sites = _load(DataConfig(**base, channels="hr,lact,urine", length=12))
    assert {s.x.shape[1:] for s in sites} == {(3, 12)}


def test_channel_list_parsing():
    assert parse_channels("") is None
    assert parse_channels(" HR , GCS ") == ("HR", "GCS")
    with pytest.raises(ValueError, match="data.channels"):
        parse_channels("HR,,GCS")
    with pytest.raises(ValueError, match=r"data\.channels names \['HR'\] more than once"):
        parse_channels("HR,GCS,HR")
