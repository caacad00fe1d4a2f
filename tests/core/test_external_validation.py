"""External validation (issue 13): a second PhysioNet-format cohort scored into its own section,
transformed with training statistics only; bad paths refused before training."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tardiff_common.data.contract import SiteData
from tardiff_common.data.loading import load_sites_for
from tardiff_common.data.normalize import fit_normalizer
from tardiff_common.pipeline import centralized
from tardiff_common.pipeline.centralized import run_centralized
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.external import load_external, transform_external


def write_cohort(folder: Path, name: str, ids: range, *, seed: int) -> None:
    """set-<name>.tar.gz + Outcomes-<name>.txt: HR / NIMAP / Temp over 16 h, deaths with higher HR;
    every 4th record never measures Temp."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    deaths = []
    with tarfile.open(folder / f"set-{name}.tar.gz", "w:gz") as tar:
        for k, rid in enumerate(ids):
            died = int(k % 3 == 0)
            lines = ["Time,Parameter,Value", f"00:00,RecordID,{rid}", f"00:00,ICUType,{1 + k % 2}"]
            for h in range(16):
                lines.append(f"{h:02d}:05,HR,{80 + 15 * died + rng.normal(0, 5):.1f}")
                lines.append(f"{h:02d}:10,NIMAP,{75 - 5 * died + rng.normal(0, 4):.1f}")
                if k % 4 and h % 4 == 0:
                    lines.append(f"{h:02d}:20,Temp,{37 + 0.5 * died + rng.normal(0, 0.3):.2f}")
            data = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"set-{name}/{rid}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            deaths.append(died)
    pd.DataFrame({"RecordID": list(ids), "SAPS-I": 1, "SOFA": 1, "Length_of_stay": 5, "Survival": -1,
                  "In-hospital_death": deaths}).to_csv(folder / f"Outcomes-{name}.txt", index=False)


@pytest.fixture
def cohorts(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TARDIFF_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "p12"
    write_cohort(folder, "a", range(1000, 1090), seed=0)
    write_cohort(folder, "b", range(2000, 2048), seed=1)
    return folder


def _config(folder: Path, external: str):
    config = preset("tiny")
    data = replace(config.data, source="physionet2012", path=str(folder), channels="HR,NIMAP,Temp", length=16,
                   site_by="all", min_site_records=10)
    return replace(config, data=data, evaluation=replace(config.evaluation, external_path=external))


def test_physionet_external_cohort_is_set_b_of_the_same_folder(cohorts):
    config = _config(cohorts, str(cohorts))
    cohort = load_external(config, load_sites_for(config.data))
    assert cohort.num_records == 48 and set(cohort.meta["stay_ids"].tolist()) == set(range(2000, 2048))
    assert cohort.x.shape[1:] == (3, 16)


def test_external_records_use_training_statistics_only():
    rng = np.random.default_rng(0)

    def site(level: float, n: int) -> SiteData:
        x = (level + rng.normal(0, 1, size=(n, 2, 6))).astype(np.float32)
        mask = np.ones(x.shape, dtype=bool)
        mask[::3, 1] = False
        x[::3, 1] = -999.0  # provisional loader fill
        return SiteData("s", x, (np.arange(n) % 2).astype(np.int64), ("a", "b"), mask)

    train, cohort = site(0.0, 60), site(50.0, 30)  # the cohort's own medians are far from training's
    normalizer = fit_normalizer("pit", train.x, train.mask)
    imputed, x_model = transform_external(cohort, train, normalizer)
    train_median = np.median(train.x[:, 1][train.mask[:, 1]])
    np.testing.assert_allclose(imputed.x[::3, 1], train_median)
    np.testing.assert_allclose(x_model, normalizer.transform(imputed.x))  # training normalizer, not refitted
    # the cohort's values lie above every training value: the training PIT maps them to its top
    assert np.all(x_model[1::3, 0] > 0.99)


@pytest.mark.slow
def test_centralized_run_writes_the_external_section(cohorts, tmp_path):
    config = _config(cohorts, str(cohorts))
    out = tmp_path / "run"
    metrics = run_centralized(config, load_sites_for(config.data), out, progress=False, log=lambda *_: None)
    external = json.loads((out / "metrics.json").read_text())["external"]
    assert set(external) == {"cohort", "tstr", "tsrtr", "paired", "baselines"}
    assert external["cohort"]["records"] == 48 and external["cohort"]["positives"] == 16
    assert set(external["tstr"]) == set(metrics["tstr"])
    assert set(external["tsrtr"]) == set(metrics["tsrtr"])
    for summary in [*external["tstr"].values(), external["baselines"]["gbm"]]:
        assert {"auroc", "auprc", "minority_f1", "ci95", "values", "runs"} <= set(summary)
    assert external["tstr"]["real"]["values"] != metrics["tstr"]["real"]["values"]  # a different test set
    assert set(metrics["baselines"]["gbm"]) == {"pooled", "all", "external"}
    report = (out / "report.md").read_text()
    assert "## External validation" in report and "## Classifier benchmark (real-only)" in report
    assert "external: gradient boosting" in report


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nowhere", r"evaluation\.external-path .*nowhere.* is not a folder"),
    (lambda root: (root / "empty").mkdir() or root / "empty", r"holds no PhysioNet 2012 cohort"),
    (lambda root: _garbage(root / "bad"), r"evaluation\.external-path .*bad.*set-c\.tar\.gz"),
    (lambda root: _copy_of_a(root), r"stay id\(s\) also in the training data"),
])
def test_bad_external_path_fails_before_training(cohorts, tmp_path, monkeypatch, make, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(centralized, "train_models", no_training)
    path = make(tmp_path)
    config = _config(cohorts, str(path))
    with pytest.raises(ValueError, match=message):
        run_centralized(config, load_sites_for(config.data), tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def _garbage(folder: Path) -> Path:
    folder.mkdir()
    (folder / "set-c.tar.gz").write_bytes(b"not a tar archive")
    (folder / "Outcomes-c.txt").write_text("RecordID,In-hospital_death,Length_of_stay\n1,0,2\n")
    return folder


def _copy_of_a(root: Path) -> Path:
    folder = root / "copy"
    write_cohort(folder, "x", range(1000, 1010), seed=3)  # same RecordIDs as set-a
    return folder


def test_hold_out_leaves_sites_out_of_training_and_scores_exactly_them(cohorts):
    config = _config(cohorts, str(cohorts))
    config = replace(config, data=replace(config.data, site_by="icutype", hold_out="icu2_cardiac_surgery"))
    train = load_sites_for(config.data)
    assert [s.name for s in train] == ["icu1_coronary"]
    cohort = load_external(config, train)
    assert cohort.num_records == 45 and [s["site"] for s in cohort.meta["sites"]] == ["icu2_cardiac_surgery"]
    assert not set(cohort.meta["stay_ids"].tolist()) & set(train[0].meta["stay_ids"].tolist())
    with pytest.raises(ValueError, match=r"data\.hold-out names \['icu9'\].*its sites: \['icu1_coronary', "
                                         r"'icu2_cardiac_surgery'\]"):
        load_sites_for(replace(config.data, hold_out="icu9"))
