"""DP and SecAgg+ through the whole federated workflow (in-process Flower, tiny config)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Context
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from opacus.accountants import RDPAccountant

from client.site import load_site
from server.privacy import PrivacyPlanError
from simulations.local_grid import LocalGrid
from tardiff_common import protocol as P
from tardiff_common.data.synthetic import SyntheticICUConfig, generate_hospitals
from tardiff_common.influence.gradient_sum import GradientSum
from tardiff_common.pipeline import phases
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.privacy.accounting import PrivacyLedger
from tardiff_common.privacy.plan import plan_site
from tardiff_common.serialization import load_module_numpy, normalizer_from_numpy

from ..federated.conftest import run_local, tiny_flat

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                                           "ignore::RuntimeWarning")]

DP_ALL = {"privacy.gradient-sum-dp": True, "privacy.dp-sgd-classifier": True, "privacy.dp-sgd-diffusion": True,
          "privacy.reproducible-noise": True}


class FreshProcessGrid(LocalGrid):
    """Every message meets a *new* Context whose state was serialized to bytes after the last
    message and parsed back (what a fresh ClientApp process per message gets in deployment)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.disk = {n: recorddict_to_proto(c.state).SerializeToString() for n, c in self.contexts.items()}

    def _deliver(self, msg):
        node = msg.metadata.dst_node_id
        old = self.contexts[node]
        state = recorddict_from_proto(ProtoRecordDict.FromString(self.disk[node]))
        self.contexts[node] = Context(run_id=old.run_id, node_id=node, node_config=dict(old.node_config),
                                      state=state, run_config=dict(old.run_config))
        reply = super()._deliver(msg)
        self.disk[node] = recorddict_to_proto(self.contexts[node].state).SerializeToString()
        return reply


def opacus_epsilon(ledger: PrivacyLedger, delta: float) -> float:
    acc = RDPAccountant()
    for e in ledger.entries:
        for _ in range(e.steps):
            acc.step(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate)
    return acc.get_epsilon(delta=delta)


def test_dp_run_with_secure_aggregation_end_to_end(tmp_path):
    """Gradient-sum DP + DP-SGD of both models at eps = 4 per site, SecAgg+ for the sum, a fresh
    context per message: completes, reports epsilon per site and phase (= Opacus on the site's
    ledger), and the secure G is the sum of the sites' DP gradient sums."""
    from client.app import app as client_app
    from server.workflow import run_federated

    flat = tiny_flat(tmp_path, **DP_ALL, **{"privacy.target-epsilon": 4.0, "privacy.secure-aggregation": True})
    grid = FreshProcessGrid(client_app, 3, flat)
    config = RunConfig().with_overrides(flat)
    metrics = run_federated(grid, config, log=lambda *_: None)
    run_dir = tmp_path / "run"

    # the ledger survived every message through serialized state: 2 + 2 + 1 + 2 DP operations per site
    rows = {(r["site"], r["phase"]): r for r in metrics["privacy"]}
    for context in grid.contexts.values():
        ledger = P.load_ledger(context)
        site = load_site(context).name
        assert [e.phase for e in ledger.entries] == (["normalization"] * 2 + ["classifier"] * 2 + ["influence"]
                                                     + ["diffusion"] * 2 + ["selection", "evaluation"])
        total = opacus_epsilon(ledger, config.privacy.delta)  # the whole run's, phases 3b and 4 included
        assert rows[(site, "total")]["epsilon"] == pytest.approx(total, rel=1e-3)
        assert 3.9 <= total <= 4.0
        assert rows[(site, "total")]["covers"].endswith("+selection+evaluation")
        for phase in ("normalization", "classifier", "influence", "diffusion", "selection", "evaluation"):
            row = rows[(site, phase)]
            assert row["delta"] == 1e-5 and row["sigma"] > 0 and row["epsilon"] < total
            assert row["clip"] == pytest.approx(next(e.clip for e in ledger.entries if e.phase == phase))
        # sensitivity sqrt(K): K = the released histograms, TSTR only (4 tuning rows x 2 seeds; 3 sets in phase 4)
        assert rows[(site, "selection")]["clip"] == pytest.approx(math.sqrt(8))
        assert rows[(site, "evaluation")]["clip"] == pytest.approx(math.sqrt(3))
    report = (run_dir / "report.md").read_text()
    assert "## Privacy" in report and "| hospital_c | influence |" in report and "SecAgg+" in report
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert len(saved["privacy"]) == 3 * 7 and saved["privacy_settings"]["secure_aggregation"] is True
    assert "| hospital_c | evaluation |" in report
    # under DP the record-level metrics are withheld, the utility metrics come from noised counts
    assert saved["membership"] == {}
    for site_metrics in saved["sites"].values():
        assert "fidelity" not in site_metrics and "membership" not in site_metrics
        f1 = site_metrics["tstr"]["tardiff"]["minority_f1"]
        assert f1 is None or math.isnan(f1)
    assert 0.0 <= saved["histogram_pooled"]["tstr"]["tardiff"]["auroc"] <= 1.0
    # nothing trained on the raw training records is released: TSTR rows only, chosen on TSTR
    assert "real" not in saved["tstr"] and saved["tsrtr"] == {} and saved["histogram_pooled"]["tsrtr"] == {}
    assert all("real" not in m["tstr"] and not m.get("tsrtr") and "real_train" not in m["influence"]
               for m in saved["sites"].values())
    assert saved["selection"]["select_on"] == "tstr"
    assert all("tsrtr_auprc" not in row for row in saved["selection"]["candidates"].values())
    assert "| real | withheld under DP: trained on raw training records without DP-SGD |" in report

    # the server only ever saw masked vectors in the influence phase
    influence = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()
                 if json.loads(line)["phase"] == "influence"]
    assert {e["message_type"] for e in influence} == {"train"} and all(not e["arrays"] for e in influence)

    # G = sum of what the sites released (their DP sums, recomputed with the same noise)
    with np.load(run_dir / "checkpoint" / "state.npz") as z:
        state = {k: z[k] for k in z.files}
    normalizer = normalizer_from_numpy({k[11:]: v for k, v in state.items() if k.startswith("normalizer/")})
    classifier_arrays = {k[11:]: v for k, v in state.items() if k.startswith("classifier/")}
    parts = []
    for context in grid.contexts.values():
        site = load_site(context)
        data = phases.normalize_splits(site.splits, normalizer)
        model = phases.new_classifier(site.config, 3, torch.device("cpu"))
        load_module_numpy(model, classifier_arrays)
        sigma = plan_site(site.config, len(site.splits.train.y)).gradient_sum.noise_multiplier
        parts.append(phases.dp_guidance_sum(model, data, site.config, noise_multiplier=sigma,
                                            site_index=site.index)[0])
    expected = GradientSum.sum(parts)
    bound = saved["privacy_settings"]["secagg_quantization_bound"]
    assert np.max(np.abs(state["gradient_sum/sum"] - expected.to_numpy())) <= bound
    assert metrics["guidance_records"] == expected.count


def _site_epsilons(config: RunConfig) -> dict[str, tuple[float, float]]:
    """(epsilon once the first classifier DP-SGD round is spent -- after phase 0's two noised
    statistics --, of the whole planned run) per tiny site."""
    from tardiff_common.pipeline.phases import prepare_splits

    sites = generate_hospitals(SyntheticICUConfig(length=16, size_scale=0.12))
    out = {}
    for s in sites:
        plan = plan_site(config, len(prepare_splits(s, config).train.y))
        first = PrivacyLedger([plan.normalization] * 2 + [plan.classifier_round]).epsilon(config.privacy.delta)
        out[s.name] = (first, plan.epsilon(config.privacy.delta, config.privacy.accountant))
    return out


def budget_flat(tmp_path, mode: str, name: str) -> tuple[dict, dict]:
    flat = tiny_flat(tmp_path, **DP_ALL, **{"privacy.noise-multiplier": 2.0, "privacy.sgd-noise-multiplier": 1.0,
                                            "privacy.on-budget-exceeded": mode, "output.name": name,
                                            "federation.classifier-rounds": 1, "federation.diffusion-rounds": 1})
    return flat, _site_epsilons(RunConfig().with_overrides(flat))


def test_plan_above_the_budget_stops_the_run_before_phase_0_releases(tmp_path):
    """A budget below every site's planned run with on-budget-exceeded = "stop": each site refuses
    phase 0 before releasing anything, naming itself, the key and its planned epsilon; no metrics."""
    flat, eps = budget_flat(tmp_path, "stop", "stop")
    flat["privacy.max-epsilon"] = min(first for first, _ in eps.values()) - 0.1
    with pytest.raises(PrivacyPlanError) as err:
        run_local(flat)
    message = str(err.value)
    for site, (_, total) in eps.items():
        assert f"privacy plan refused: site {site!r}" in message
        assert f"privacy.max-epsilon: the planned run spends epsilon {total:.4g} at site {site!r}" in message
    assert not (tmp_path / "stop" / "metrics.json").exists()


def _releases_within(plan, budget: float, delta: float) -> list:
    """The planned operations a site releases under ``budget`` with "drop-site": in run order, each
    one that keeps it within the budget; after its first refusal it is no longer asked for DP-SGD or
    gradient-sum rounds, but still for the selection and evaluation counts (each checked again)."""
    released, refused = [], False
    for entry in plan.history():
        if refused and entry.phase not in ("selection", "evaluation"):
            continue
        if PrivacyLedger(released + [entry]).epsilon(delta) <= budget:
            released.append(entry)
        else:
            refused = True
    return released


def test_budget_refusal_drops_the_site(tmp_path):
    """A budget between the two largest planned totals: the most expensive site refuses the first
    step that would pass it, is dropped from the later training rounds, releases only what still
    fits, and the run finishes with the others; every total stays within the budget."""
    from tardiff_common.pipeline.phases import prepare_splits

    flat, eps = budget_flat(tmp_path, "drop-site", "drop")
    totals = sorted(eps, key=lambda s: eps[s][1])
    worst = totals[-1]
    flat["privacy.max-epsilon"] = (eps[worst][1] + eps[totals[-2]][1]) / 2
    metrics, _, config = run_local(flat)
    everyone = sorted(eps)
    others = [s for s in everyone if s != worst]
    size = next(len(prepare_splits(s, config).train.y) for s in generate_hospitals(
        SyntheticICUConfig(length=16, size_scale=0.12)) if s.name == worst)
    released = _releases_within(plan_site(config, size), flat["privacy.max-epsilon"], config.privacy.delta)
    assert len(released) < len(plan_site(config, size).history())  # it did refuse something
    worst_phases = {e.phase for e in released}
    for phase in ("classifier", "influence", "diffusion"):
        assert metrics["participation"][phase][-1] == (everyone if phase in worst_phases else others), phase
    assert metrics["privacy_settings"]["excluded_sites"] == [worst]
    phases_of = {s: {r["phase"] for r in metrics["privacy"] if r["site"] == s and r["dp"]} for s in everyone}
    assert phases_of[worst] == worst_phases | {"total"}
    for site in others:
        assert phases_of[site] == {"normalization", "classifier", "influence", "diffusion", "selection",
                                   "evaluation", "total"}
    worst_total = next(r for r in metrics["privacy"] if r["site"] == worst and r["phase"] == "total")
    assert worst_total["epsilon"] == pytest.approx(PrivacyLedger(released).epsilon(config.privacy.delta), rel=1e-6)
    for row in metrics["privacy"]:
        if row["phase"] == "total":
            assert row["epsilon"] <= flat["privacy.max-epsilon"]
    # a site evaluates locally after being dropped only if its noised counts still fit the budget
    assert set(metrics["sites"]) == set(others) | ({worst} if "evaluation" in worst_phases else set())
