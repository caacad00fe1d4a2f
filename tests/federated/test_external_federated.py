"""A site's own external cohort (node config ``external-path``, issue 13): scored in phase 4 with
the training statistics only, replied as aggregates, pooled by the server into the "external"
section with the centralized run's schema; a bad path stops the run before training, naming the site."""

from __future__ import annotations

import json

import pytest

from tardiff_common.data.loading import load_sites_for
from tardiff_common.pipeline.centralized import run_centralized
from tardiff_common.pipeline.config import RunConfig
from tests.core.test_external_validation import write_cohort

from .conftest import run_local, tiny_flat
from .test_metrics_schema import key_tree


@pytest.fixture
def cohorts(tmp_path, monkeypatch):
    monkeypatch.setenv("TARDIFF_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "p12"
    write_cohort(folder, "a", range(1000, 1090), seed=0)  # ICU types 1 and 2: two sites
    write_cohort(folder, "b", range(2000, 2048), seed=1)
    return folder


def _flat(tmp_path, folder) -> dict:
    return tiny_flat(tmp_path, **{"data.source": "physionet2012", "data.path": str(folder),
                                  "data.channels": "HR,NIMAP,Temp", "data.length": 16,
                                  "data.min-site-records": 10, "federation.num-sites": 2})


@pytest.mark.slow
def test_federated_external_section_has_the_centralized_schema(cohorts, tmp_path):
    flat = _flat(tmp_path, cohorts)
    run_local(flat, num_nodes=2, node_configs=[{"external-path": str(cohorts)}, {"external-path": str(cohorts)}])
    federated = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = RunConfig().with_overrides({**flat, "evaluation.external-path": str(cohorts)})
    run_centralized(config, load_sites_for(config.data), tmp_path / "central", progress=False, log=lambda *_: None)
    central = json.loads((tmp_path / "central" / "metrics.json").read_text())

    assert key_tree(federated["external"]) == key_tree(central["external"])
    cohort = federated["external"]["cohort"]
    assert cohort["records"] == 2 * 48 and cohort["positives"] == 2 * 16  # both sites scored set-b
    assert [row["site"] for row in cohort["sites"]] == sorted(federated["sites"])
    assert str(cohorts) not in json.dumps(federated["external"])  # a site's path stays at the site
    # the site's external results have their own section, not a site entry
    assert all("external" not in m and "baselines" not in m for m in federated["sites"].values())
    gbm = federated["baselines"]["gbm"]
    assert set(gbm) == {"site_weighted", "external", *federated["sites"]}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## External validation" in report and "site_weighted: gradient boosting" in report


def test_a_sites_bad_external_path_stops_the_run_before_training_naming_the_site(cohorts, tmp_path):
    flat = _flat(tmp_path, cohorts)
    with pytest.raises(ValueError, match=r"phase 0, before any training: .*site 'icu2_cardiac_surgery': node config "
                                         r"external-path .*nowhere.* is not a folder") as err:
        run_local(flat, num_nodes=2, node_configs=[{}, {"external-path": str(tmp_path / "nowhere")}])
    assert "icu1_coronary" not in str(err.value)
    assert not (tmp_path / "run" / "metrics.json").exists()
