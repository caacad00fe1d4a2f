"""End-to-end: the ``tardiff centralized`` command on the tiny preset, and its failure modes."""

import json

import numpy as np
import pytest

from tardiff_common.cli import main
from tardiff_common.data.synthetic import SyntheticICUConfig, generate_hospitals
from tardiff_common.pipeline import centralized
from tardiff_common.pipeline.centralized import run_centralized
from tardiff_common.pipeline.config import preset

pytestmark = pytest.mark.slow


def tiny_sites():
    return generate_hospitals(SyntheticICUConfig(length=16, size_scale=0.12))


def test_cli_tiny_run_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["centralized", "--preset", "tiny", "--out", str(out), "--quiet"]) == 0
    for name in ("report.md", "metrics.json", "config.json", "profiles.png", "examples.png", "tstr.png",
                 "synthetic.npz", "checkpoint.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("real", "unguided", "tardiff"):
        assert set(metrics["tstr"][method]) >= {"auroc", "auprc", "minority_f1"}
    assert set(metrics["timing"]) >= {"classifier", "influence", "diffusion", "generation", "evaluation", "total"}
    assert metrics["federated"] is False
    assert set(metrics["fidelity"]["unguided"]) >= {"discriminative", "predictive_mae", "context_fid", "mia_auc"}
    synth = np.load(out / "synthetic.npz")
    assert synth["tardiff_x"].shape[1:] == (3, 16) and synth["tardiff_y"].sum() > 0
    assert "TSTR" in (out / "report.md").read_text()
    assert "tardiff" in capsys.readouterr().out
    # a second run into the same folder is refused and leaves the first untouched
    before = (out / "metrics.json").read_bytes()
    assert main(["centralized", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2
    assert (out / "metrics.json").read_bytes() == before


def test_failure_mid_run_leaves_no_folder(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(centralized, "plot_examples", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_centralized(preset("tiny"), tiny_sites(), tmp_path / "run", progress=False, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_bad_override_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["centralized", "--preset", "tiny", "--set", "guidance.scael=3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key 'guidance.scael'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_pooled_data_with_one_class_is_refused(tmp_path):
    sites = generate_hospitals()
    for s in sites:
        s.y[:] = 0
    with pytest.raises(ValueError, match="only one class"):
        run_centralized(preset("tiny"), sites, tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
