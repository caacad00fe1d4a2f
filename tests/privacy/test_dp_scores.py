"""The DP releases of phases 3b and 4 (``privacy.dp_scores``): noise scale, ledger, withheld
metrics, no record-shaped release, DP off unchanged, and the guidance choice under noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from server.privacy import query_private
from tardiff_common import protocol as P
from tardiff_common.metrics.histogram_auc import SCORE_BINS, auroc_from_histogram, score_histogram
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.selection import NULL_LABEL, scored_modes, selection_from_scores, tuning_rows
from tardiff_common.pipeline.validation import site_plan_problems
from tardiff_common.privacy.accounting import epsilon_of
from tardiff_common.privacy.dp_scores import (
    DP_SCORE_BINS,
    GROUP,
    ScoreRelease,
    count_histograms,
    evaluation_histograms,
    noise_histograms,
    release_candidate_scores,
    release_site_metrics,
    score_entry,
    selection_histograms,
)
from tardiff_common.privacy.ledger_policy import SiteLedger
from tardiff_common.privacy.plan import plan_site

DP = {"privacy.gradient-sum-dp": True, "privacy.noise-multiplier": 2.0}


def release(sigma: float, seed: int) -> ScoreRelease:
    return ScoreRelease(sigma, torch.Generator().manual_seed(seed))


def histograms_of(rng, k: int, n: int = 40) -> np.ndarray:
    y = (rng.random(n) < 0.3).astype(int)
    return np.stack([score_histogram(y, np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)) for _ in range(k)])


def tstr_tuning_scores(config, rng) -> dict:
    """A site's selection reply content under DP: one TSTR score histogram per tuning seed for every
    tuning row (``tuning_rows``), with fixed influence 0.5 and no Context-FID."""
    seeds = len(config.guidance.tuning_seeds)
    return {label: {"form": c.form, "scale": c.scale, "influence": 0.5, "context_fid": float("nan"),
                    "tstr": histograms_of(rng, seeds).tolist()}
            for label, c, _ in tuning_rows(config)}


def test_noise_has_std_sigma_times_sqrt_k_and_changes_with_the_seed():
    """Each coarse cell gets N(0, sigma^2 K): empirical std over many draws ~ sigma sqrt(K); unbiased
    away from 0; a different generator seed gives other counts; mass only at the group centres."""
    k, sigma = 4, 3.0
    clean = np.zeros((k, 2, SCORE_BINS), dtype=np.int64)
    clean[:, :, ::GROUP] = 500  # 500 per coarse cell, far from the clip at 0
    draws = np.stack([noise_histograms(clean, release(sigma, s)) for s in range(300)])
    centres = draws[:, :, :, GROUP // 2::GROUP].astype(float)
    assert centres.shape[-1] == DP_SCORE_BINS
    assert np.delete(draws, np.s_[GROUP // 2::GROUP], axis=3).sum() == 0
    assert np.std(centres - 500) == pytest.approx(sigma * math.sqrt(k), rel=0.03)
    assert abs(np.mean(centres - 500)) < 0.1
    assert not np.array_equal(draws[0], draws[1])
    assert np.array_equal(noise_histograms(clean, release(sigma, 7)), noise_histograms(clean, release(sigma, 7)))
    assert draws.dtype == np.int64 and draws.min() >= 0


def test_ledger_entry_states_the_sensitivity():
    entry = score_entry("evaluation", 2.0, 9)
    assert (entry.noise_multiplier, entry.sample_rate, entry.steps, entry.clip) == (2.0, 1.0, 1, 3.0)


def site_metrics(rng, sets=("tardiff", "unguided", "unguided_2"), seeds=1, ratios=("1",), *, raw=False) -> dict:
    """An ``evaluate_site`` result as computed under DP (TSTR of the synthetic sets only); ``raw``:
    with the "real" and TSRTR rows of a run without DP."""
    def summary():
        hist = histograms_of(rng, seeds)
        return {"auroc": 0.7, "auprc": 0.5, "minority_f1": 0.4, "ci95": {}, "values": {"auroc": [0.7] * seeds},
                "runs": seeds, "histograms": hist.reshape(-1).tolist()}
    return {"tstr": {m: summary() for m in (("real",) if raw else ()) + tuple(sets)},
            "tsrtr": {m: {r: summary() for r in ratios} for m in sets} if raw else {},
            "global_classifier": {"auroc": 0.8, "auprc": 0.6, "minority_f1": 0.5},
            "fidelity": {"tardiff": {"discriminative": 0.1}}, "membership": {"tardiff": {"mia_auc": 0.5}},
            "test_size": 40, "influence": {"tardiff": 1.0, "real_train": 0.3}, "synthetic-records": 90}


def test_evaluation_release_noises_counts_and_withholds_record_level_metrics():
    config = preset("tiny").with_overrides(DP)
    metrics = site_metrics(np.random.default_rng(0))
    k = count_histograms(metrics)
    assert k == evaluation_histograms(config) == 3  # TSTR of 3 synthetic sets, 1 seed: no "real", no TSRTR
    out, released_k = release_site_metrics(metrics, release(1.0, 0))
    assert released_k == k
    assert out["fidelity"] == {} and out["membership"] == {}
    assert all(math.isnan(v) for v in out["global_classifier"].values())
    # the real training split's mean influence is a function of training records: dropped
    assert (out["test_size"], out["synthetic-records"], out["influence"]) == (40, 90, {"tardiff": 1.0})
    summary = out["tstr"]["tardiff"]
    hist = np.asarray(summary["histograms"]).reshape(-1, 2, SCORE_BINS)
    assert summary["auroc"] == pytest.approx(auroc_from_histogram(hist[0]))  # post-processing of the noised counts
    assert math.isnan(summary["minority_f1"])
    # nothing record-shaped: every list is a [2, bins] histogram per run or a per-run value list
    flat = P.flatten_metrics(out)
    assert all(len(v) in (1, 2 * SCORE_BINS) for v in flat.values() if isinstance(v, list))
    again, _ = release_site_metrics(site_metrics(np.random.default_rng(0)), release(1.0, 1))
    assert again["tstr"]["tardiff"]["histograms"] != summary["histograms"]


def test_releases_refuse_histograms_of_classifiers_trained_on_raw_training_records():
    """A "real" or TSRTR row (or a tuning TSRTR histogram) depends on the training split without
    DP-SGD: the DP release functions refuse it instead of noising it."""
    with pytest.raises(ValueError, match="raw training split"):
        release_site_metrics(site_metrics(np.random.default_rng(0), raw=True), release(1.0, 0))
    other = site_metrics(np.random.default_rng(0))
    other["other_tests"] = {"external": {"tstr": {"tardiff": other["tstr"]["tardiff"]},
                                         "tsrtr": {"tardiff": {"1": other["tstr"]["tardiff"]}}}}
    with pytest.raises(ValueError, match="raw training split"):
        release_site_metrics(other, release(1.0, 0))
    config = preset("tiny").with_overrides(DP)
    rng = np.random.default_rng(1)
    seeds = len(config.guidance.tuning_seeds)
    scores = {label: {"form": c.form, "scale": c.scale, "influence": 0.5, "context_fid": 3.0,
                      "tsrtr": histograms_of(rng, seeds).tolist(), "tstr": histograms_of(rng, seeds).tolist()}
              for label, c, _ in tuning_rows(config)}
    with pytest.raises(ValueError, match="raw training split"):
        release_candidate_scores(scores, release(1.0, 0))


def test_selection_release_noises_every_tuning_histogram():
    config = preset("tiny").with_overrides(DP)
    seeds = len(config.guidance.tuning_seeds)
    scores = tstr_tuning_scores(config, np.random.default_rng(1))
    out, k = release_candidate_scores(scores, release(2.0, 0))
    assert k == selection_histograms(config) == len(tuning_rows(config)) * seeds  # TSTR only
    assert all(math.isnan(r["context_fid"]) and r["influence"] == 0.5 for r in out.values())
    for label in scores:
        assert "tsrtr" not in out[label]
        assert np.asarray(out[label]["tstr"]).shape == (seeds, 2, SCORE_BINS)
        assert out[label]["tstr"] != scores[label]["tstr"]
    record = P.encode_candidate_scores(out)  # the wire form still decodes, with TSTR only
    assert not any(name.endswith("/tsrtr") for name in record)
    decoded = P.decode_candidate_scores(record, tuning_rows(config), seeds, SCORE_BINS, scored_modes(config))
    assert all(set(row) >= {"tstr"} and "tsrtr" not in row for row in decoded.values())
    with pytest.raises(ValueError, match="carries tstr counts"):  # the server's decoder without DP wants TSRTR only
        P.decode_candidate_scores(record, tuning_rows(config), seeds, SCORE_BINS, scored_modes(preset("tiny")))
    chosen = selection_from_scores([out], config)  # pooled and chosen on TSTR
    assert chosen["select_on"] == "tstr" and "tsrtr_auprc" not in chosen["table"]["unguided"]


def test_plan_and_ledger_include_the_new_releases():
    """The whole-run epsilon composes the selection and evaluation releases; DP off: none planned."""
    config = preset("tiny").with_overrides(DP)
    plan = plan_site(config, 80)
    phases = [e.phase for e in plan.history()]
    assert phases.count("selection") == phases.count("evaluation") == 1
    without = [e for e in plan.history() if e.phase not in ("selection", "evaluation")]
    assert plan.epsilon(1e-5, "rdp") > epsilon_of(without, 1e-5)
    policy = SiteLedger(config, "h", 80)
    planned = policy.planned("evaluation")
    summary = policy.record([score_entry("evaluation", planned.noise_multiplier, 7)], "evaluation")["privacy"]
    assert summary["evaluation"]["clip"] == pytest.approx(math.sqrt(7))
    assert summary["epsilon"] == pytest.approx(epsilon_of([planned], 1e-5))
    off = SiteLedger(preset("tiny"), "h", 80)
    assert off.planned("selection") is None and off.planned("evaluation") is None
    fixed = preset("tiny").with_overrides({**DP, "guidance.scale": 10.0})
    assert plan_site(fixed, 80).selection is None  # no selection phase, no release


class FakeRun:
    """What ``query_private`` uses of a ``ServerRun``: records the content sent to each node."""

    def __init__(self, config, run_dir):
        from types import SimpleNamespace

        self.config, self.run_dir, self.state = config, run_dir, {}
        self.node_ids = [1, 2]
        self.sites = {1: SimpleNamespace(name="a"), 2: SimpleNamespace(name="b")}
        self.audit = SimpleNamespace(entries=[], site_name=lambda n: self.sites[n].name)
        self.sent: dict = {}

    def query(self, phase, message_type, content, *, on_reply=None):
        self.sent = {n: content(n) for n in self.node_ids}
        self.on_reply = on_reply
        return []


def test_dp_off_sends_the_content_unchanged_and_dp_on_logs_the_release(tmp_path):
    content = RecordDict({P.CONFIG: ConfigRecord({"x": 1})})
    off = FakeRun(preset("tiny"), tmp_path)
    query_private(off, "generation", "evaluation", P.GENERATE, content)
    assert all(sent is content for sent in off.sent.values()) and off.on_reply is None and off.state == {}
    on = FakeRun(preset("tiny").with_overrides(DP), tmp_path)
    on.state["privacy_dispatched"] = {"a": ["normalization:1"], "b": []}
    query_private(on, "generation", "evaluation", P.GENERATE, content)
    assert P.PRIVACY_SPENT in on.sent[1].config_records
    assert on.state["privacy_dispatched"] == {"a": ["normalization:1", "evaluation:1"], "b": ["evaluation:1"]}


def test_site_refuses_a_plan_its_split_cannot_honour():
    """DP-SGD with explicit noise: the config alone is fine, the plan at a 24-record site spends
    epsilon 18.3 > max-epsilon 18 (a 75-record site's 17.7 is within it)."""
    config = preset("tiny").with_overrides({"privacy.dp-sgd-classifier": True, "privacy.sgd-noise-multiplier": 0.8,
                                            "privacy.max-epsilon": 18.0})
    problems = site_plan_problems(config, "hospital_c", 24)
    assert problems and "'hospital_c'" in str(problems[0]) and problems[0].key == "privacy.max-epsilon"
    assert site_plan_problems(config, "hospital_a", 75) == []
    assert site_plan_problems(preset("tiny").with_overrides(DP), "hospital_c", 24) == []
    assert site_plan_problems(preset("tiny"), "hospital_c", 0) == []
    no_train = site_plan_problems(config, "hospital_c", 0)
    assert no_train[0].key == "privacy.dp-sgd-classifier" and "no training records" in no_train[0].message


def tuning_scores(rng, config, n: int, better: float) -> dict:
    """One site's candidate table: unguided, the null row and x0 score with separation 0.15; the
    "paper s=10" candidate with separation ``better``."""
    seeds = len(config.guidance.tuning_seeds)
    out = {}
    for label, c, _ in tuning_rows(config):
        sep = better if (c.scale > 0 and c.form == "paper") else 0.15
        hists = []
        for _ in range(2 * seeds):
            y = (rng.random(n) < 0.3).astype(int)
            hists.append(score_histogram(y, np.clip(sep * y + rng.random(n) * (1 - sep), 0, 1)))
        h = np.stack(hists)
        out[label] = {"form": c.form, "scale": c.scale, "influence": 0.0, "context_fid": float("nan"),
                      "tstr": h[seeds:].tolist()}
    return out


def selection_picks(sigma: float, n: int, *, floor: bool, draws: int = 20) -> dict[str, int]:
    """How often 3 sites x ``n`` tuning records pick the better / a guided candidate under noise."""
    config = preset("tiny").with_overrides(DP)
    k = selection_histograms(config)
    rng = np.random.default_rng(0)
    picks = {"better": 0, "equal": 0}
    for d in range(draws):
        for case, sep in (("better", 0.6), ("equal", 0.15)):
            sites = [release_candidate_scores(tuning_scores(rng, config, n, sep), release(sigma, 100 * d + j))[0]
                     for j in range(3)]
            result = selection_from_scores(sites, config, dp_variance=3 * sigma ** 2 * k if floor else 0.0)
            chosen = result["chosen"]
            assert NULL_LABEL in result["table"] and ("dp_noise_floor" in result) == floor
            picks[case] += chosen.scale > 0 and (case == "equal" or chosen.form == "paper")
    return picks


def test_selection_rule_with_noised_counts():
    """With noised counts and no real difference the null row's single gap lets noise pick a
    guided candidate about half the time; the DP noise floor keeps s = 0 then, while a clearly
    better candidate is still chosen at moderate noise (3 sites x 100 tuning records)."""
    assert selection_picks(2.0, 100, floor=False)["equal"] >= 6
    picks = selection_picks(2.0, 100, floor=True)
    assert picks["equal"] <= 2
    assert selection_picks(0.5, 100, floor=True)["better"] >= 16


def test_a_noised_tuning_reply_with_its_privacy_report_fits_the_wire_schema():
    """The privacy report's scalars count apart from the tuning schema's own (at most 64)."""
    from flwr.app import Message, MetricRecord
    from flwr.supercore.task_identity import TaskIdentity

    from server.wire import MAX_PRIVACY_SCALARS, reply_schema, schema_problems

    config = preset("tiny").with_overrides(DP)
    seeds = len(config.guidance.tuning_seeds)
    scores = tstr_tuning_scores(config, np.random.default_rng(2))
    noised, k = release_candidate_scores(scores, release(1.0, 0))
    policy = SiteLedger(config, "hospital_a", 75)
    privacy = P.flatten_metrics(policy.record([score_entry("selection", 1.0, k)], "selection"))
    schema = reply_schema(P.TUNE, channels=3, config=config, tuning_rows=len(tuning_rows(config)))

    def tune_reply(extra: dict) -> Message:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        query = Message(RecordDict(), dst_node_id=7, message_type=P.TUNE)
        metrics = MetricRecord({**dict(P.encode_candidate_scores(noised).items()), **extra})
        return Message(RecordDict({P.METRICS: metrics, P.SITE: ConfigRecord({"name": "hospital_a", "index": 0})}),
                       reply_to=query)

    assert schema_problems(schema, tune_reply(privacy)) == []
    raw = {"tuning/0/tsrtr": [0] * (seeds * 2 * SCORE_BINS)}  # a TSRTR list has no place in a DP reply
    assert any("no list is declared" in p for p in schema_problems(schema, tune_reply(raw)))
    flood = {f"privacy/x/{i}": 0.0 for i in range(MAX_PRIVACY_SCALARS + 1)}
    assert any("privacy metrics" in p for p in schema_problems(schema, tune_reply(flood)))


# ----------------------------------------------------------------------------- the releases ignore the training split


def _site(rng, n_train: int = 40, channels: int = 3, length: int = 16):
    """Random normalized splits of one site ([N, C, L] float32, labels int64)."""
    from tardiff_common.pipeline.phases import NormalizedSplits

    def split(n):
        x = rng.uniform(-1, 1, (n, channels, length)).astype(np.float32)
        y = (rng.random(n) < 0.3).astype(np.int64)
        y[:2] = (0, 1)
        return x, y
    parts = [split(n) for n in (n_train, 12, 30, 30)]
    return NormalizedSplits("h", tuple(f"c{i}" for i in range(channels)), *(a for part in parts for a in part))


def _other_training_records(data, rng):
    """The same site with other training records (same size): values redrawn, labels flipped."""
    import dataclasses

    return dataclasses.replace(data, train_x=rng.uniform(-1, 1, data.train_x.shape).astype(np.float32),
                               train_y=(1 - data.train_y).astype(np.int64))


def _fixed_models(config, data):
    from tardiff_common.pipeline.phases import SamplingModels, new_classifier, new_unet

    device = torch.device("cpu")
    classifier = new_classifier(config, data.in_channels, device)
    size = sum(p.numel() for p in classifier.parameters())
    direction = torch.randn(size, generator=torch.Generator().manual_seed(0))
    return SamplingModels(new_unet(config, data.in_channels, device).eval(), classifier.eval(), direction / direction.norm())


def _tiny(**overrides):
    return preset("tiny").with_overrides({"evaluation.seeds": "0", "guidance.tuning-seeds": "0",
                                          "guidance.candidates": "paper:10", **overrides})


def test_dp_selection_release_does_not_depend_on_the_training_split():
    """Phase 3b under DP, models fixed: other training records (values and labels) give the very
    same release with the same noise seed -- TSTR only, no Context-FID against them, K = rows x
    seeds. Without DP the TSRTR counts do change (the check can fail)."""
    from tardiff_common.pipeline.selection import score_candidates_at_site
    from tardiff_common.privacy.dp_scores import dp_evaluation_config

    rng = np.random.default_rng(0)
    config = dp_evaluation_config(_tiny(**DP))
    data = _site(rng)
    other = _other_training_records(data, rng)
    models = _fixed_models(config, data)

    def released(d):
        scores = score_candidates_at_site(models, d, config, site_index=0)
        assert all(set(row) & {"tsrtr", "tstr"} == {"tstr"} and math.isnan(row["context_fid"])
                   for row in scores.values())
        return release_candidate_scores(scores, release(1.0, 5))

    (a, k), (b, _) = released(data), released(other)
    assert k == selection_histograms(config) == len(tuning_rows(config))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-aware: bit-identical
    plain = _tiny()
    raw_a = score_candidates_at_site(_fixed_models(plain, data), data, plain, site_index=0)
    raw_b = score_candidates_at_site(_fixed_models(plain, data), other, plain, site_index=0)
    assert any(raw_a[label]["tsrtr"] != raw_b[label]["tsrtr"] for label in raw_a)


def test_dp_evaluation_release_does_not_depend_on_the_training_split():
    """Phase 4 under DP, models and synthetic sets fixed: other training records give the very same
    release with the same noise seed (no "real" row, no TSRTR, no fidelity / membership, no
    real-train influence; K = TSTR histograms); without DP the "real" and TSRTR rows change."""
    from tardiff_common.pipeline.evaluation import evaluate_site
    from tardiff_common.privacy.dp_scores import dp_evaluation_config

    rng = np.random.default_rng(1)
    config = dp_evaluation_config(_tiny(**DP))
    data = _site(rng)
    other = _other_training_records(data, rng)
    models = _fixed_models(config, data)
    unguided = (rng.uniform(-1, 1, (40, 3, 16)).astype(np.float32), (np.arange(40) % 2).astype(np.int64))
    synthetic = {"unguided": unguided, "unguided_2": (unguided[0][::-1].copy(), unguided[1][::-1].copy()),
                 "tardiff": unguided}
    influence = {"unguided": 0.1, "unguided_2": 0.2, "tardiff": 0.1}

    def released(d, cfg=config):
        metrics = evaluate_site(models.classifier, synthetic, d, cfg, site_index=0, influence=dict(influence),
                                other_tests={"external": (d.test_x[:20], d.test_y[:20])})
        return metrics if not cfg.privacy.any_dp else release_site_metrics(metrics, release(1.0, 5))

    (a, k), (b, _) = released(data), released(other)
    assert "real" not in a["tstr"] and a["tsrtr"] == {} and a["other_tests"]["external"]["tsrtr"] == {}
    assert a["fidelity"] == {} and a["membership"] == {}
    assert k == evaluation_histograms(config, test_splits=2) == count_histograms(a)
    assert json.dumps(P.flatten_metrics(a), sort_keys=True) == json.dumps(P.flatten_metrics(b), sort_keys=True)
    plain = _tiny()
    raw_a, raw_b = released(data, plain), released(other, plain)
    assert raw_a["tstr"]["real"]["histograms"] != raw_b["tstr"]["real"]["histograms"]
    assert raw_a["tsrtr"]["tardiff"] != raw_b["tsrtr"]["tardiff"]
    assert raw_a["tstr"]["tardiff"]["histograms"] == raw_b["tstr"]["tardiff"]["histograms"]  # TSTR: no training split
