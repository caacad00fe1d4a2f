"""The centralized run honours privacy.*: DP changes its outputs, its ledger is in metrics.json,
its epsilon is the Opacus accountant's, and what it cannot do is refused before work starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from tardiff_common.data.synthetic import SyntheticICUConfig, generate_hospitals
from tardiff_common.pipeline.centralized import run_centralized
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.config_errors import ConfigError
from tardiff_common.privacy.plan import plan_site

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")]

DP = {"privacy.gradient-sum-dp": True, "privacy.dp-sgd-classifier": True, "privacy.dp-sgd-diffusion": True,
      "privacy.noise-multiplier": 1.5, "privacy.sgd-noise-multiplier": 1.0, "privacy.reproducible-noise": True}


def sites():
    return generate_hospitals(SyntheticICUConfig(num_hospitals=2, length=16, size_scale=0.12))


def run(tmp_path, name, overrides):
    config = preset("tiny").with_overrides(overrides)
    run_centralized(config, sites(), tmp_path / name, progress=False, log=lambda *_: None)
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    with np.load(tmp_path / name / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return config, metrics, arrays


def test_centralized_dp_changes_the_outputs_and_reports_the_accountants_epsilon(tmp_path):
    _, plain, plain_ckpt = run(tmp_path, "plain", {})
    config, dp, dp_ckpt = run(tmp_path, "dp", DP)
    # DP changed the models, G and the normalizer (same array groups, different values)
    assert set(plain_ckpt) == set(dp_ckpt)
    for group in ("classifier/", "unet/", "gradient_sum/sum", "normalizer/"):
        names = [k for k in plain_ckpt if k.startswith(group)]
        assert names and any(plain_ckpt[k].shape != dp_ckpt[k].shape or not np.array_equal(plain_ckpt[k], dp_ckpt[k])
                             for k in names), group
    # the privacy section: the federated row shape, for the pooled data holder
    rows = {r["phase"]: r for r in dp["privacy"]}
    assert set(rows) == {"normalization", "classifier", "influence", "diffusion", "selection", "evaluation", "total"}
    assert all(r["site"] == "pooled" and r["dp"] for r in rows.values())
    assert rows["total"]["covers"] == "normalization+classifier+influence+diffusion+selection+evaluation"
    # phase 4 under DP: every test split's TSTR counts in one release (pooled + 2 hospitals: K = 3 x 3 sets)
    assert rows["evaluation"]["clip"] == pytest.approx(9 ** 0.5) and rows["evaluation"]["sigma"] == 1.5
    assert dp["membership"] == {} and dp["baselines"]["gbm"] == {}
    # nothing trained on the raw training records is released: no real-only row, no TSRTR, TSTR kept
    assert "real" not in dp["tstr"] and dp["tsrtr"] == {} and dp["site_weighted"]["tsrtr"] == {}
    assert "real" not in dp["site_weighted"]["tstr"] and "tardiff" in dp["tstr"]
    assert all("real" not in v["tstr"] for v in dp["per_site_test"].values())
    assert "real_train" not in dp["influence"] and "real_train" in plain["influence"]
    assert "tardiff - unguided" in dp["paired"]["tstr"] and "tardiff - real" not in dp["paired"]["tstr"]
    assert "real" in plain["tstr"] and plain["tsrtr"]
    report = (tmp_path / "dp" / "report.md").read_text()
    assert "| real | withheld under DP: trained on raw training records without DP-SGD |" in report
    assert "All TSRTR rows withheld under DP: trained on raw training records without DP-SGD." in report
    plain_report = (tmp_path / "plain" / "report.md").read_text()
    assert "withheld under DP" not in plain_report
    assert rows["influence"]["sigma"] == 1.5 and rows["classifier"]["sigma"] == 1.0
    assert dp["privacy_settings"]["dp_sgd_diffusion"] is True
    # epsilon = an Opacus accountant stepped through every release of the run
    plan = plan_site(config, _train_size(config))
    accountant = RDPAccountant()
    for entry in plan.history():
        for _ in range(entry.steps):
            accountant.step(noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate)
    assert rows["total"]["epsilon"] == pytest.approx(accountant.get_epsilon(delta=config.privacy.delta), rel=1e-6)
    assert rows["classifier"]["steps"] == plan.classifier_round.steps * config.federation.classifier_rounds
    assert rows["normalization"]["steps"] == 2
    # without DP: the same rows, every phase released without noise (epsilon None = inf)
    plain_rows = {r["phase"]: r for r in plain["privacy"]}
    assert set(plain_rows) == set(rows)
    assert all(not r["dp"] and r["epsilon"] is None for r in plain_rows.values())


def _train_size(config) -> int:
    from tardiff_common.pipeline.phases import prepare_splits

    return sum(len(prepare_splits(site, config).train.y) for site in sites())


def test_sum_only_dp_is_honoured_and_epsilon_grows_with_the_statistics(tmp_path):
    config, metrics, _ = run(tmp_path, "sum", {"privacy.gradient-sum-dp": True, "privacy.noise-multiplier": 2.0,
                                               "privacy.reproducible-noise": True})
    rows = {r["phase"]: r for r in metrics["privacy"]}
    assert rows["influence"]["dp"] and rows["normalization"]["dp"] and not rows["classifier"]["dp"]
    assert rows["total"]["epsilon"] > rows["influence"]["epsilon"] > 0
    assert rows["classifier"]["epsilon"] is None  # released without noise: inf


def test_unsupported_and_over_budget_options_are_refused_before_work(tmp_path):
    with pytest.raises(ConfigError, match="privacy.secure-aggregation"):
        run(tmp_path, "secagg", {"privacy.secure-aggregation": True})
    assert not (tmp_path / "secagg").exists()
    from tardiff_common.privacy.accounting import PrivacyBudgetExceeded

    with pytest.raises(PrivacyBudgetExceeded, match="site 'pooled' refuses phase 'normalization moments'"):
        run(tmp_path, "budget", {**DP, "privacy.max-epsilon": 0.01})
    assert not (tmp_path / "budget").exists()
