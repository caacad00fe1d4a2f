"""Guidance selection on the tuning split: pooling, the choice rule, no test-split reads, and
s = 0 when guidance cannot help."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tardiff_common.data.synthetic import HospitalProfile, SyntheticICUConfig, generate_hospitals
from tardiff_common.diffusion.ema import EMA
from tardiff_common.influence.guidance import Candidate
from tardiff_common.metrics.histogram_auc import SCORE_BINS, score_histogram
from tardiff_common.pipeline.centralized import pooled_data
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.phases import (
    SamplingModels,
    classifier_round,
    diffusion_round,
    guidance_sum,
    new_classifier,
    new_unet,
)
from tardiff_common.pipeline.selection import (
    NULL_LABEL,
    choose_candidate,
    pool_candidate_scores,
    score_candidates_at_site,
    scored_rows,
    select_guidance,
    selection_from_scores,
)


def _row(form, scale, auprc_hist):
    return {"form": form, "scale": scale, "influence": 0.0, "tsrtr": auprc_hist, "tstr": auprc_hist}


def _hist(pos_high: bool, n=40):
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 4 == 0).astype(int)
    p = np.where(y == 1, 0.9, 0.1) if pos_high else rng.random(n)
    return [score_histogram(y, p).tolist()]


def test_pooled_scores_sum_site_histograms():
    good, bad = _hist(True), _hist(False)
    sites = [{"unguided": _row("paper", 0.0, bad), "x0:0.1": _row("x0", 0.1, good)}] * 2
    table = pool_candidate_scores(sites)
    assert table["x0:0.1"]["tsrtr_auprc"] == pytest.approx(1.0)
    assert table["unguided"]["tsrtr_auprc"] < 1.0
    assert choose_candidate(table) == Candidate("x0", 0.1)


def test_choice_rule_needs_a_gain_beyond_the_null_draw():
    table = {
        "unguided": {"form": "paper", "scale": 0.0, "tsrtr_auprc": 0.30},
        "paper:10": {"form": "paper", "scale": 10.0, "tsrtr_auprc": 0.30},
        "x0:0.2": {"form": "x0", "scale": 0.2, "tsrtr_auprc": float("nan")},
    }
    assert choose_candidate(table) == Candidate("paper", 0.0)  # a tie goes to unguided; NaN never wins
    table["paper:10"]["tsrtr_auprc"] = 0.305
    assert choose_candidate(table, tie_tolerance=0.01) == Candidate("paper", 0.0)
    assert choose_candidate(table, tie_tolerance=0.0) == Candidate("paper", 10.0)
    # a second unguided draw that differs by 0.02: a gain of 0.005 is noise
    table[NULL_LABEL] = {"form": "paper", "scale": 0.0, "tsrtr_auprc": 0.28}
    assert choose_candidate(table) == Candidate("paper", 0.0)
    table["x0:0.2"]["tsrtr_auprc"] = 0.33
    assert choose_candidate(table) == Candidate("x0", 0.2)
    table["unguided"]["tsrtr_auprc"] = float("nan")
    assert choose_candidate(table) == Candidate("x0", 0.2)


def test_choice_rule_excludes_candidates_off_the_data_manifold():
    table = {
        "unguided": {"form": "paper", "scale": 0.0, "tsrtr_auprc": 0.30, "context_fid": 3.0},
        "paper:30": {"form": "paper", "scale": 30.0, "tsrtr_auprc": 0.40, "context_fid": 28.0},
        "x0:0.05": {"form": "x0", "scale": 0.05, "tsrtr_auprc": 0.35, "context_fid": 5.0},
    }
    assert choose_candidate(table) == Candidate("paper", 30.0)  # no constraint
    assert choose_candidate(table, max_fid_ratio=2.0) == Candidate("x0", 0.05)
    table["x0:0.05"]["context_fid"] = 7.0
    assert choose_candidate(table, max_fid_ratio=2.0) == Candidate("paper", 0.0)


class _Poison(np.ndarray):
    """An array that fails on any read: stands in for the test split during selection."""

    def __array_finalize__(self, obj):  # noqa: D401 - numpy hook
        pass

    def __getitem__(self, item):
        raise AssertionError("selection read the test split")

    def __len__(self):
        raise AssertionError("selection read the test split")

    def __array__(self, *args, **kwargs):
        raise AssertionError("selection read the test split")


@pytest.fixture(scope="module")
def trained():
    """Tiny trained classifier + diffusion model on a small embedded data set (pooled)."""
    torch.manual_seed(0)
    config = preset("tiny").with_overrides({"evaluation.seeds": "0", "guidance.tuning-ratio": 0.5})
    sites = generate_hospitals(SyntheticICUConfig(length=16, profiles=(HospitalProfile("a", 240, 0.25),)))
    _, _, _, data = pooled_data(config, sites)
    device = torch.device("cpu")
    classifier = new_classifier(config, data.in_channels, device)
    for r in (1, 2):
        classifier_round(classifier, data, config, server_round=r, site_index=0)
    direction = guidance_sum(classifier, data, config).direction()
    unet = new_unet(config, data.in_channels, device)
    ema = EMA(unet, config.diffusion_train.ema_decay)
    for r in (1, 2):
        diffusion_round(unet, ema, data, config, server_round=r, site_index=0)
    return config, data, classifier, direction, ema.shadow


def test_selection_never_reads_the_test_split(trained):
    config, data, classifier, direction, unet = trained
    poisoned = dataclasses.replace(data, test_x=np.zeros((3, 3, 16)).view(_Poison),
                                   test_y=np.zeros(3, dtype=np.int64).view(_Poison))
    selection = select_guidance(SamplingModels(unet, classifier, direction), [poisoned], config)
    assert selection["mode"] == "auto"
    assert set(selection["table"]) == {"unguided", "paper:10", "x0:0.1", NULL_LABEL}
    with pytest.raises(AssertionError, match="test split"):
        len(poisoned.test_y)  # the poison works


def test_site_scores_are_counts_of_the_tuning_split(trained):
    config, data, classifier, direction, unet = trained
    config = config.with_overrides({"guidance.max-fid-ratio": 0.0})  # no gate: every row scored
    scores = score_candidates_at_site(SamplingModels(unet, classifier, direction), data, config, site_index=0)
    for row in scores.values():
        assert "tstr" not in row  # only the mode the choice is made on (guidance.select-on) is fitted
        for mode in ("tsrtr",):
            counts = np.asarray(row[mode])
            assert counts.shape == (len(config.guidance.tuning_seeds), 2, SCORE_BINS)
            assert counts[:, 1].sum(axis=1).tolist() == [int(data.tuning_y.sum())] * len(config.guidance.tuning_seeds)
            assert counts.sum(axis=(1, 2)).tolist() == [len(data.tuning_y)] * len(config.guidance.tuning_seeds)


def test_useless_guidance_is_not_chosen(trained):
    """Guidance made useless (a zero direction g: every guided step is the unguided step) must
    select s = 0, and a random direction must not be chosen on noise alone."""
    config, data, classifier, direction, unet = trained
    config = config.with_overrides({"guidance.candidates": "paper:30,normalized:0.5,x0:0.2"})
    zero = select_guidance(SamplingModels(unet, classifier, torch.zeros_like(direction)), [data], config)
    table = zero["table"]
    assert {table[k]["tsrtr_auprc"] for k in ("unguided", "paper:30", "normalized:0.5", "x0:0.2")} == \
        {table["unguided"]["tsrtr_auprc"]}  # identical sets, identical scores
    assert zero["chosen"] == Candidate("paper", 0.0), zero["summary"]


def _fid_rows(**fids):
    rows = {"unguided": {"scale": 0.0, "context_fid": fids.pop("unguided")}}
    rows.update({label: {"scale": 1.0, "context_fid": fid} for label, fid in fids.items()})
    rows[NULL_LABEL] = {"scale": 0.0, "context_fid": 3.1}
    return rows


def test_context_fid_gate_scores_only_rows_that_can_be_chosen():
    rows = _fid_rows(unguided=3.0, far=40.0, near=5.9, nan=float("nan"))
    assert scored_rows(rows, 2.0) == ["unguided", "near", NULL_LABEL]
    assert scored_rows(rows, 0.0) == list(rows)  # no limit: everything
    assert scored_rows(_fid_rows(unguided=3.0, far=40.0), 2.0) == []  # no guided row passes: nothing to decide
    assert scored_rows(_fid_rows(unguided=float("nan"), far=40.0), 2.0) == ["unguided", "far", NULL_LABEL]  # DP
    assert scored_rows(_fid_rows(unguided=3.0, far=40.0), 2.0, reliable=False) == ["unguided", "far", NULL_LABEL]


def test_context_fid_gates_only_on_enough_records():
    from tardiff_common.pipeline.selection import fid_is_reliable

    assert fid_is_reliable(1225, 256) and fid_is_reliable(128, 4000)
    assert not fid_is_reliable(1225, 127) and not fid_is_reliable(100, 612)


def test_a_candidate_some_site_did_not_score_is_not_chosen():
    good, bad = _hist(True), _hist(False)
    scored = {"unguided": _row("paper", 0.0, bad), "x0:0.1": _row("x0", 0.1, good)}
    gated = {"unguided": {"form": "paper", "scale": 0.0, "influence": 0.0},
             "x0:0.1": {"form": "x0", "scale": 0.1, "influence": 0.0}}
    table = pool_candidate_scores([scored, gated])
    assert table["x0:0.1"]["sites_scored"] == 1 and table["x0:0.1"]["tsrtr_auprc"] == pytest.approx(1.0)
    assert choose_candidate(table, sites=2) == Candidate("paper", 0.0)
    assert choose_candidate(table, sites=1) == Candidate("x0", 0.1)
    none = pool_candidate_scores([gated, gated])
    assert "tsrtr_auprc" not in none["x0:0.1"] and choose_candidate(none, sites=2).scale == 0.0


def test_gated_site_fits_no_classifier(trained, monkeypatch):
    """A limit no guided candidate meets: no tuning classifier is trained, unguided is chosen."""
    import tardiff_common.pipeline.selection as selection

    config, data, classifier, direction, unet = trained
    fits = []
    real_fit = selection.fit_evaluation_classifier
    monkeypatch.setattr(selection, "fit_evaluation_classifier", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    models = SamplingModels(unet, classifier, direction)
    strict = config.with_overrides({"guidance.max-fid-ratio": 1e-9})
    # this tiny site's Context-FIDs rest on fewer records than the embedding has dimensions: no gate
    assert not selection.fid_is_reliable(len(data.train_y), len(data.train_y) // 2)
    score_candidates_at_site(models, data, strict, site_index=0)
    assert len(fits) == 4 * len(config.guidance.tuning_seeds)  # every row scored, as before the gate
    fits.clear()
    monkeypatch.setattr(selection, "fid_is_reliable", lambda *a: True)  # as at a site with enough records
    scores = score_candidates_at_site(models, data, strict, site_index=0)
    assert fits == [] and all("tsrtr" not in row and np.isfinite(row["context_fid"]) for row in scores.values())
    chosen = selection_from_scores([scores], strict)
    assert chosen["chosen"].scale == 0.0 and "none was scored" in chosen["summary"]
    loose = config.with_overrides({"guidance.max-fid-ratio": 1e9})
    scores = score_candidates_at_site(models, data, loose, site_index=0)
    assert len(fits) == len(scores) * len(config.guidance.tuning_seeds)


def test_pilot_gates_without_changing_the_scored_tuning_sets(trained, monkeypatch):
    """With guidance.fid-pilot below the tuning size, Context-FID is measured on a pilot draw of
    that size, and every scored row is trained on the very tuning set it gets without a pilot."""
    import tardiff_common.pipeline.selection as selection

    config, data, classifier, direction, unet = trained
    config = config.with_overrides({"guidance.max-fid-ratio": 0.0, "guidance.candidates": "x0:0.1",
                                    "guidance.tuning-seeds": "0"})
    num = int(round(config.guidance.tuning_ratio * len(data.train_y)))
    assert num > 16
    sets = []
    real_fit = selection.fit_evaluation_classifier
    monkeypatch.setattr(selection, "fit_evaluation_classifier",
                        lambda train, *a, **k: sets.append(train) or real_fit(train, *a, **k))
    models = SamplingModels(unet, classifier, direction)
    plain = score_candidates_at_site(models, data, config.with_overrides({"guidance.fid-pilot": 0}), site_index=0)
    piloted = score_candidates_at_site(models, data, config.with_overrides({"guidance.fid-pilot": 16}), site_index=0)
    assert len(sets) == 2 * 3  # unguided, x0:0.1, null; TSRTR: the real training split + the set
    for before, after in zip(sets[:3], sets[3:], strict=True):
        np.testing.assert_array_equal(before[0], after[0])
    for label, candidate, draw in selection.tuning_rows(config):
        assert piloted[label]["tsrtr"] == plain[label]["tsrtr"]
        pilot_x, _ = selection.synthesize(unet, classifier, direction, num_samples=16, positive_fraction=0.5,
                                          length=data.length, config=config, site_index=0,
                                          guidance=config.guidance.with_candidate(candidate),
                                          draw=selection.PILOT_DRAW + draw - selection.TUNING_DRAW)
        assert piloted[label]["context_fid"] == pytest.approx(selection._context_fid(data.train_x, pilot_x))
