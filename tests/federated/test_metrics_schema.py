"""One metrics.json schema: the centralized and the federated run write the same sections, with
the same keys all the way down (``pipeline.evaluation.RESULT_KEYS``), plus each run's own records."""

from __future__ import annotations

import json

import pytest

from tardiff_common.data.loading import load_sites_for
from tardiff_common.pipeline.centralized import run_centralized
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.evaluation import CENTRALIZED_ONLY, FEDERATED_ONLY, OPTIONAL_KEYS, RESULT_KEYS

from .conftest import run_local, tiny_flat

pytestmark = pytest.mark.slow

# sections whose inner keys name run-specific things (sites, phases, privacy rows): compared one level deep
SHALLOW = ("data", "timing", "timing_cpu", "privacy", "privacy_settings", "sites", "baselines")
SITE_ONLY = {"privacy"}  # a hospital's own DP ledger summary, added by the ClientApp


def key_tree(obj):
    """The nested keys of ``obj`` ({key: subtree}, None for a leaf; lists are leaves)."""
    return {k: key_tree(v) for k, v in obj.items()} if isinstance(obj, dict) else None


def site_keys(sites: dict) -> dict:
    """The key tree of one site's metrics (the union over sites; a site's own records left out)."""
    trees = [key_tree({k: v for k, v in m.items() if k not in SITE_ONLY}) for m in sites.values()]
    assert all(t == trees[0] for t in trees), "sites of one run disagree on their metrics' keys"
    return trees[0]


def test_centralized_and_federated_metrics_share_one_schema(tmp_path):
    flat = tiny_flat(tmp_path)
    federated, _, config = run_local(flat)
    config = RunConfig().with_overrides(flat)
    run_centralized(config, load_sites_for(config.data), tmp_path / "central", progress=False, log=lambda *_: None)
    central = json.loads((tmp_path / "central" / "metrics.json").read_text())
    federated = json.loads((tmp_path / "run" / "metrics.json").read_text())  # as written, not as returned

    assert set(central) - CENTRALIZED_ONLY == RESULT_KEYS
    assert set(federated) - FEDERATED_ONLY == RESULT_KEYS
    assert not set(federated) & CENTRALIZED_ONLY and not set(central) & FEDERATED_ONLY
    assert not (set(central) | set(federated)) & OPTIONAL_KEYS  # no external cohort configured
    # the benchmark beside the real-only rows: each run's own test splits, one summary schema
    assert set(central["baselines"]["gbm"]) == {"pooled", *central["per_site_test"]}
    # (a site whose training split cannot fit the booster, e.g. one positive record, is left out of it)
    assert {"site_weighted", "hospital_a"} <= set(federated["baselines"]["gbm"]) <= {"site_weighted", *federated["sites"]}
    assert key_tree(central["baselines"]["gbm"]["pooled"]) == key_tree(federated["baselines"]["gbm"]["site_weighted"])
    for section in sorted(RESULT_KEYS - set(SHALLOW)):
        assert key_tree(central[section]) == key_tree(federated[section]), section
    for section in SHALLOW:
        if isinstance(central[section], dict) and section != "sites":
            assert type(central[section]) is type(federated[section]), section
    assert site_keys(central["sites"]) == site_keys(federated["sites"])
    # and the shared part is what a reader of either file relies on
    assert central["federated"] is False and federated["federated"] is True
    assert set(central["membership"]) == set(central["fidelity"]) == {"unguided", "unguided_2", "tardiff"}
