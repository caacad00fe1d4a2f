import numpy as np
import pytest
from scipy.spatial.distance import cdist

from tardiff_common.metrics.membership import MembershipConfig, membership_inference, nearest_distances

from .series import ar1


def test_nearest_distances_match_brute_force_in_chunks():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(37, 2, 5)), rng.normal(size=(23, 2, 5))
    expected = cdist(q.reshape(37, -1), r.reshape(23, -1)).min(axis=1)
    assert np.allclose(nearest_distances(q, r, chunk_size=8), expected, rtol=1e-12, atol=1e-12)
    assert np.all(nearest_distances(r[:5], r, chunk_size=2) == 0.0)  # exact copies: exactly 0


def test_copied_training_records_leak():
    train, test = ar1(300, seed=0), ar1(300, seed=1)
    synthetic = np.concatenate([train, ar1(100, seed=2)])  # every training record copied
    res = membership_inference(train, test, synthetic, seed=0)
    assert res["mia_auc"] > 0.9 and res["mia_f1"] > 0.7
    assert res["dcr_members_p5"] == 0.0 and res["dcr_members_median"] == 0.0 and res["dcr_ratio"] == 0.0


def test_fresh_samples_of_the_same_process_do_not_leak():
    train, test = ar1(300, seed=0), ar1(300, seed=1)
    res = membership_inference(train, test, ar1(400, seed=2), seed=0)
    assert abs(res["mia_auc"] - 0.5) < 0.1
    assert abs(res["mia_accuracy"] - 0.5) < 0.1
    assert 0.9 < res["dcr_ratio"] < 1.1


def test_balanced_subsample_and_determinism():
    train, test, synthetic = ar1(80, seed=0), ar1(30, seed=1), ar1(50, seed=2)
    config = MembershipConfig(max_records=20)
    a = membership_inference(train, test, synthetic, seed=5, config=config)
    assert a == membership_inference(train, test, synthetic, seed=5, config=config)
    assert set(a) >= {"mia_auc", "mia_f1", "dcr_members_median", "dcr_nonmembers_median", "dcr_ratio"}
    with pytest.raises(ValueError):
        membership_inference(train, test[:1], synthetic, seed=0)
