"""End-to-end: the ``tardiff centralized`` command on the tiny preset, and its failure modes."""

import dataclasses
import json

import numpy as np
import pytest

from tardiff_common.cli import main
from tardiff_common.data.synthetic import SyntheticICUConfig, generate_hospitals
from tardiff_common.pipeline import centralized
from tardiff_common.pipeline.centralized import run_centralized
from tardiff_common.pipeline.config import preset


def tiny_sites():
    return generate_hospitals(SyntheticICUConfig(length=16, size_scale=0.12))


@pytest.mark.slow
def test_cli_tiny_run_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["centralized", "--preset", "tiny", "--out", str(out), "--quiet"]) == 0
    for name in ("report.md", "metrics.json", "config.json", "profiles.png", "examples.png", "tstr.png",
                 "synthetic.npz", "checkpoint.npz"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("real", "unguided", "tardiff"):
        assert set(metrics["tstr"][method]) >= {"auroc", "auprc", "minority_f1"}
    assert set(metrics["timing"]) >= {"classifier", "influence", "diffusion", "generation", "evaluation", "total"}
    assert metrics["federated"] is False
    assert set(metrics["fidelity"]["unguided"]) >= {"discriminative", "predictive_mae", "context_fid"}
    assert 0.0 <= metrics["membership"]["unguided"]["mia_auc"] <= 1.0  # evaluate_site's membership section
    synth = np.load(out / "synthetic.npz")
    assert synth["tardiff_x"].shape[1:] == (3, 16) and synth["tardiff_y"].sum() > 0
    assert "TSTR" in (out / "report.md").read_text()
    assert "tardiff" in capsys.readouterr().out
    # a second run into the same folder is refused and leaves the first untouched
    before = (out / "metrics.json").read_bytes()
    assert main(["centralized", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2
    assert (out / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_failure_mid_run_leaves_no_folder(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(centralized, "plot_examples", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_centralized(preset("tiny"), tiny_sites(), tmp_path / "run", progress=False, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_bad_override_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["centralized", "--preset", "tiny", "--set", "guidance.scael=3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'guidance.scael'; did you mean 'guidance.scale'" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("sets, keys", [
    (["diffusion.num-steps=-5"], ["diffusion.num-steps"]),
    (["sampling.num-inference-steps=500"], ["sampling.num-inference-steps"]),
    (["unet.in-channels=5"], ["unet.in-channels"]),  # the synthetic data has 3 channels
    (["threads=0"], ["threads"]),
    (["diffusion.num-steps=many", "classifier.hidden=0"], ["diffusion.num-steps", "classifier.hidden"]),
    (["privacy.dp-sgd-classifier=true", "privacy.target-epsilon=1e-6", "privacy.max-epsilon=1"],
     ["privacy.target-epsilon"]),
    (["privacy.dp-sgd-classifier=true", "privacy.target-epsilon=2", "privacy.max-epsilon=1"],
     ["privacy.target-epsilon"]),
])
def test_bad_config_is_refused_before_any_work(tmp_path, capsys, sets, keys):
    out = tmp_path / "run"
    argv = ["centralized", "--preset", "tiny", "--out", str(out), "--quiet"]
    assert main([*argv, *(f"--set={s}" for s in sets)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tardiff: error: invalid config")
    for key in keys:
        assert f"{key}:" in err
    assert "Traceback" not in err and not out.exists()


def test_centralized_refuses_privacy_it_does_not_run(tmp_path, capsys, monkeypatch):
    """issue 15 case 1: DP options a centralized run cannot honour are refused, never recorded as on."""
    monkeypatch.setattr(centralized, "SUPPORTED_PRIVACY", (), raising=False)
    out = tmp_path / "run"
    assert main(["centralized", "--preset", "tiny", "--out", str(out), "--quiet", "--set", "privacy.dp-sgd-classifier=true",
                 "--set", "privacy.target-epsilon=3"]) == 2
    assert "privacy.dp-sgd-classifier: the centralized run does not implement" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("threads", ["-3", "0"])
def test_threads_below_one_are_a_usage_error(tmp_path, capsys, threads):
    with pytest.raises(SystemExit) as exit_:
        main(["centralized", "--preset", "tiny", "--out", str(tmp_path / "run"), "--threads", threads])
    assert exit_.value.code == 2
    assert f"--threads: expects an integer >= 1 (torch CPU threads), got {threads}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_command_reads_set_values_as_toml(capsys):
    assert main(["config", "--set", 'output.name="my run"', "--set", "unet.dim-mults=[1,2,4]",
                 "--set", "sampling.clip-x0=none"]) == 0
    out = capsys.readouterr().out
    assert "output.name = 'my run'" in out and "unet.dim-mults = '1,2,4'" in out and "sampling.clip-x0 = 'none'" in out


@pytest.mark.slow
def test_pooled_data_with_one_class_is_refused(tmp_path):
    # generate_hospitals' cached arrays are read-only: build one-class copies instead
    sites = [dataclasses.replace(s, y=np.zeros_like(s.y)) for s in generate_hospitals()]
    with pytest.raises(ValueError, match="only one class"):
        run_centralized(preset("tiny"), sites, tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
