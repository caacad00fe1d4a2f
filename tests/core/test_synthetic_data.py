import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from tardiff_common.data.contract import validate_site
from tardiff_common.data.synthetic import SyntheticICUConfig, generate_hospitals


def test_default_shape_and_determinism():
    a = generate_hospitals()
    b = generate_hospitals()
    assert [s.name for s in a] == ["hospital_a", "hospital_b", "hospital_c"]
    for s, t in zip(a, b):
        validate_site(s)
        assert s.x.dtype == np.float32 and s.y.dtype == np.int64 and s.mask.dtype == bool
        assert s.x.shape[1:] == (3, 48)
        np.testing.assert_array_equal(s.x, t.x)
        np.testing.assert_array_equal(s.y, t.y)
    c = generate_hospitals(SyntheticICUConfig(seed=1))
    assert not np.array_equal(a[0].x, c[0].x)


def test_hospitals_differ_in_size_prevalence_and_shift():
    sites = generate_hospitals()
    sizes = [s.num_records for s in sites]
    prevalences = [s.prevalence for s in sites]
    assert len(set(sizes)) == 3
    assert all(0.04 <= p <= 0.22 for p in prevalences) and max(prevalences) - min(prevalences) > 0.05
    hr_means = [s.x[:, 0].mean() for s in sites]
    assert max(hr_means) - min(hr_means) > 5
    missing = [1 - s.mask.mean() for s in sites]
    assert missing[0] < missing[1] < missing[2]


def test_eicu_length_and_more_hospitals():
    sites = generate_hospitals(SyntheticICUConfig(num_hospitals=5, length=288, size_scale=0.1))
    assert len(sites) == 5 and sites[0].x.shape[2] == 288


def test_gaps_are_filled_forward():
    site = generate_hospitals(SyntheticICUConfig(size_scale=0.2))[2]
    i, c, t = np.argwhere(~site.mask[:, :, 1:])[0]
    t = t + 1
    assert site.x[i, c, t] == site.x[i, c, t - 1]


def test_outcome_depends_on_dynamics():
    """Simple dynamic features (trend, variability, minimum SpO2) predict the label; the level alone less so."""
    sites = generate_hospitals(SyntheticICUConfig(seed=3))
    x = np.concatenate([s.x for s in sites])
    y = np.concatenate([s.y for s in sites])
    trend = x[:, :, -12:].mean(2) - x[:, :, :12].mean(2)
    feats = np.concatenate([trend, np.diff(x, axis=2).std(2), x.min(2)], axis=1)
    half = len(y) // 2
    idx = np.random.default_rng(0).permutation(len(y))
    tr, te = idx[:half], idx[half:]
    model = LogisticRegression(max_iter=3000).fit(feats[tr], y[tr])
    auc = roc_auc_score(y[te], model.predict_proba(feats[te])[:, 1])
    assert auc > 0.65
