"""The federated workflow in-process: invariants of DESIGN.md and robustness of the phases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from client import site as client_site
from server.audit import RecordShapedReplyError
from tardiff_common.checkpoint import TrainedTarDiff
from tardiff_common.data.contract import SiteData
from tardiff_common.data.normalize import fit_normalizer
from tardiff_common.data.synthetic import HospitalProfile, SyntheticICUConfig, generate_hospitals
from tardiff_common.influence.gradient_sum import guidance_gradient_sum
from tardiff_common.pipeline.centralized import pool_splits, run_centralized
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.phases import new_classifier, normalize_splits, prepare_splits
from tardiff_common.serialization import load_module_numpy, normalizer_from_numpy

from .conftest import run_local, tiny_flat

pytestmark = pytest.mark.slow


def load_state(run_dir):
    with np.load(run_dir / "checkpoint" / "state.npz") as z:
        return {k: z[k] for k in z.files}


def sub(state, prefix):
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + "/")}


def test_report_schema_and_files(tmp_path):
    metrics, grid, config = run_local(tiny_flat(tmp_path))
    run_dir = tmp_path / "run"
    for name in ("report.md", "metrics.json", "config.json", "tstr.png", "sites_auprc.png", "audit.jsonl"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["federated"] is True
    for method in ("real", "unguided", "tardiff"):
        assert set(saved["tstr"][method]) >= {"auroc", "auprc", "minority_f1"}
    assert set(saved["sites"]) == {"hospital_a", "hospital_b", "hospital_c"}
    assert set(saved["timing"]) >= {"normalization", "classifier", "influence", "diffusion", "generation", "total"}
    assert set(saved["fidelity"]["tardiff"]) >= {"discriminative", "predictive_mae", "context_fid"}
    assert 0.0 <= saved["fidelity"]["tardiff"]["discriminative"] <= 0.5
    # guidance chosen on the sites' tuning splits; paired and histogram-pooled results present
    assert saved["selection"]["mode"] == "auto"
    assert set(saved["selection"]["candidates"]) == {"unguided", "paper:10", "x0:0.1", "null (2nd unguided draw)"}
    assert saved["selection"]["chosen"]["label"] in saved["selection"]["candidates"]
    assert set(saved["paired"]["tstr"]) == {"tardiff - unguided", "unguided_2 - unguided (null)", "tardiff - real"}
    assert set(saved["histogram_pooled"]["tstr"]) == {"real", "unguided", "unguided_2", "tardiff"}
    assert "histograms" not in json.dumps(saved["sites"])
    assert "## Guidance setting" in (run_dir / "report.md").read_text()
    assert saved["participation"]["classifier"] == [["hospital_a", "hospital_b", "hospital_c"]] * 2
    # each site kept its synthetic data on its own disk
    for site in saved["sites"]:
        synth = np.load(run_dir / "sites" / site / "synthetic.npz")
        assert synth["tardiff_x"].shape[1:] == (3, 16)


def test_federated_guidance_sum_equals_pooled(tmp_path):
    """G = sum_k G_k over unequal sites equals G on the union of the guidance splits."""
    _, _, config = run_local(tiny_flat(tmp_path))
    state = load_state(tmp_path / "run")
    normalizer = normalizer_from_numpy(sub(state, "normalizer"))
    sites = generate_hospitals(SyntheticICUConfig(length=16, size_scale=0.12))
    pooled = normalize_splits(pool_splits([prepare_splits(s, config) for s in sites]), normalizer)
    classifier = new_classifier(config, 3, torch.device("cpu"))
    load_module_numpy(classifier, sub(state, "classifier"))
    central = guidance_gradient_sum(classifier, pooled.guidance_x, pooled.guidance_y)
    np.testing.assert_allclose(state["gradient_sum/sum"], central.to_numpy(), rtol=1e-5, atol=1e-6)
    # and the federated normalizer is the pooled one
    pooled_norm = fit_normalizer("pit", pooled_x := np.concatenate([prepare_splits(s, config).train.x for s in sites]),
                                 np.concatenate([prepare_splits(s, config).train.mask for s in sites]))
    np.testing.assert_allclose(normalizer.transform(pooled_x), pooled_norm.transform(pooled_x), atol=1e-6)


def test_one_site_fedavg_equals_centralized(tmp_path):
    """FedAvg with one site reproduces the centralized pipeline exactly (same seed and schedule)."""
    flat = tiny_flat(tmp_path, **{"data.num-hospitals": 1, "federation.num-sites": 1})
    run_local(flat, num_nodes=1)
    fed = load_state(tmp_path / "run")
    config = RunConfig().with_overrides(flat)
    sites = generate_hospitals(SyntheticICUConfig(num_hospitals=1, length=16, size_scale=0.12))
    run_centralized(config, sites, tmp_path / "central", progress=False, log=lambda *_: None)
    # one checkpoint format: the server's state.npz loads as a TrainedTarDiff like the centralized file
    central = TrainedTarDiff.load(tmp_path / "central" / "checkpoint.npz", config)
    federated = TrainedTarDiff.load(tmp_path / "run" / "checkpoint" / "state.npz", config,
                                    guidance_records=central.gradient_sum.count)  # the server keeps it in JSON
    central_arrays, fed_arrays = central.to_arrays(), federated.to_arrays()
    assert set(central_arrays) == set(fed_arrays)
    for key, value in central_arrays.items():
        np.testing.assert_array_equal(fed_arrays[key], value, err_msg=key)
    for key in ("classifier/", "unet/", "gradient_sum/sum"):  # and they are the arrays the server saved
        for name in (k for k in central_arrays if k.startswith(key)):
            np.testing.assert_array_equal(fed[name], central_arrays[name], err_msg=name)


def test_every_reply_is_audited_and_none_is_record_shaped(tmp_path):
    metrics, grid, _ = run_local(tiny_flat(tmp_path))
    entries = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").read_text().splitlines()]
    assert len(entries) == len(grid.delivered)  # one audit row per reply of every phase
    types = {e["message_type"] for e in entries}
    assert types == {"query.stats", "query.histogram", "train.classifier", "query.influence",
                     "train.diffusion", "query.tune", "query.generate"}
    tuning = [e for e in entries if e["message_type"] == "query.tune"]
    assert len(tuning) == 3 and all(e["arrays"] == {} for e in tuning)  # the tuning reply: metrics only
    counts = {s["site"]: {s["train"], s["guidance"], s["tuning"], s["test"], s["records"]}
              for s in metrics["data"]["sites"]}
    for e in entries:
        for shape in e["arrays"].values():
            assert not (len(shape) >= 2 and shape[0] in counts[e["site"]]), (e["site"], shape)
    assert metrics["communication"]["violations"] == []


@pytest.mark.parametrize("leak", ["records", "labels"])
def test_a_record_shaped_reply_stops_the_run(tmp_path, leak):
    from tardiff_common import protocol as P

    def tamper(reply):
        if reply.metadata.message_type == P.INFLUENCE and not reply.has_error():
            n = int(reply.content[P.METRICS]["count"])
            if leak == "records":
                arrays = P.from_array_record(reply.content[P.GRADIENT])
                arrays["leak"] = np.zeros((n, 3, 16), dtype=np.float32)
                reply.content[P.GRADIENT] = P.to_array_record(arrays)
            else:
                reply.content[P.METRICS]["labels"] = [0.0] * n
        return reply

    with pytest.raises(RecordShapedReplyError, match="refused"):
        run_local(tiny_flat(tmp_path), intercept=tamper)
    assert (tmp_path / "run" / "checkpoint" / "failure.json").is_file()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_site_without_positives_and_tiny_site_complete(tmp_path, monkeypatch):
    profiles = (
        HospitalProfile("big", 400, 0.15),
        HospitalProfile("no_positives", 150, 0.0),
        HospitalProfile("tiny", 24, 0.2, hr_offset=8.0),
    )
    sites = generate_hospitals(SyntheticICUConfig(length=16, profiles=profiles))
    assert sites[1].y.sum() == 0
    monkeypatch.setattr(client_site, "load_sites_for", lambda data_config: [
        SiteData(s.name, s.x, s.y, s.channels, s.mask) for s in sites])
    metrics, _, _ = run_local(tiny_flat(tmp_path))
    assert set(metrics["sites"]) == {"big", "no_positives", "tiny"}
    no_pos = metrics["sites"]["no_positives"]
    assert np.isnan(no_pos["tstr"]["tardiff"]["auroc"])  # no positive in its test split: AUROC undefined
    assert np.isfinite(metrics["tstr"]["tardiff"]["auroc"])  # pooled over the sites where it is defined


def test_failed_site_is_dropped_or_stops_the_run(tmp_path, monkeypatch):
    from client import app as client_app_module

    original = client_app_module.phases.diffusion_round

    def flaky(unet, ema, data, config, *, server_round, site_index, progress=False):
        if site_index == 2:
            raise RuntimeError("GPU fell off the bus")
        return original(unet, ema, data, config, server_round=server_round, site_index=site_index)

    monkeypatch.setattr(client_app_module.phases, "diffusion_round", flaky)
    metrics, _, _ = run_local(tiny_flat(tmp_path, **{"federation.min-sites": 2}))
    assert metrics["participation"]["diffusion"] == [["hospital_a", "hospital_b"]] * 2
    from server.run import TooFewSitesError

    with pytest.raises(TooFewSitesError, match="min-sites = 3"):
        run_local(tiny_flat(tmp_path, **{"federation.min-sites": 3, "output.name": "run2"}))
