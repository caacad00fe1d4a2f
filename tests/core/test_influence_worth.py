"""End to end: the influence-worth study on the tiny preset writes its report and sane statistics."""

import json

import numpy as np
import pytest
import torch

from simulations.influence_worth import main, spearman_with_ci, stratified_subsets


def test_spearman_with_ci_and_stratified_subsets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    strong = spearman_with_ci(x, x + 0.1 * rng.normal(size=60), seed=0)
    assert strong["rho"] > 0.9 and strong["lo"] <= strong["rho"] <= strong["hi"] and strong["fisher_lo"] < strong["rho"]
    assert np.isnan(spearman_with_ci(x, np.ones(60), seed=0)["rho"])  # constant worth: no correlation defined
    y = np.array([1] * 10 + [0] * 30)
    subsets = stratified_subsets(y, 8, 5, rng)
    assert subsets.shape == (5, 8) and all(len(set(row)) == 8 for row in subsets)
    assert (y[subsets].sum(axis=1) == 2).all()  # the pool's label mix, 1 in 4
    with pytest.raises(ValueError, match="cannot draw"):
        stratified_subsets(y, 41, 1, rng)


@pytest.mark.slow
def test_influence_worth_tiny_end_to_end(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "worth-tiny"
    try:
        results = main(["--out", str(out), "--preset", "tiny", "--subsets", "6", "--noise-subsets", "1"])
    finally:
        torch.set_num_threads(threads)
    for name in ("results.json", "results.md", "worth.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["per_subset"]) == 6 and len(saved["subset_members"]) == 6
    assert set(saved["correlations"]) == {"final_influence", "trajectory_influence", "typicality",
                                          "typical_influence", "minus_loss", "random"}
    assert np.isfinite(results["correlations"]["random"]["neg_loss"]["rho"])
    assert saved["sizes"]["subset"] == round(0.5 * saved["sizes"]["train"])
    assert saved["sizes"]["pool"] == round(2.0 * saved["sizes"]["train"])
    members = np.array(saved["subset_members"])
    pool_y = np.array(saved["pool_scores"]["y"])
    assert len({int(pool_y[row].sum()) for row in members}) == 1  # stratified: same label mix in every subset
    md = (out / "results.md").read_text()
    assert "| final_influence |" in md and "Noise floor" in md and "--subsets 6" in md
    with pytest.raises(SystemExit, match="exists"):  # never overwrites a finished study
        main(["--out", str(out), "--preset", "tiny", "--subsets", "6"])
    assert "[worth] subset 6/6" in capsys.readouterr().out
