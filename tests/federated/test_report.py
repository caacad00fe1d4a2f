"""The federated report's comparison table (pure function, no run needed)."""

from __future__ import annotations

from server.report import comparison_rows


def _s(v: float) -> dict:
    return {"auroc": v, "auprc": v / 2, "minority_f1": v / 3}


def test_comparison_rows_pair_federated_and_centralized_tstr_and_tsrtr():
    fed = {"tstr": {"real": _s(0.7), "tardiff": _s(0.6)},
           "tsrtr": {"tardiff": {"0.5": _s(0.1), "1": _s(0.65)}}}
    central = {"site_weighted": {"tstr": {"real": _s(0.72)},
                                 "tsrtr": {"unguided": {"1.0": _s(0.71), "0.2": _s(0.2)}}}}
    rows = comparison_rows(fed, central)
    assert list(rows) == ["federated / real", "federated / tardiff", "federated / real + tardiff x1",
                          "centralized / real", "centralized / real + unguided x1"]
    assert rows["federated / real + tardiff x1"]["auroc"] == 0.65  # the largest ratio, not the first
    assert rows["centralized / real + unguided x1"]["auroc"] == 0.71
    assert list(comparison_rows(fed, None)) == list(rows)[:3]


def test_load_baseline_waits_for_the_centralized_half(tmp_path):
    """output.baseline-wait: the main job runs both halves at once; the report waits for the baseline."""
    import json
    import threading
    from types import SimpleNamespace

    from server.report import load_baseline
    from tardiff_common.pipeline.config import RunConfig

    logs: list[str] = []

    def run(wait: float):
        config = RunConfig().with_overrides({"output.baseline-wait": wait})
        return SimpleNamespace(config=config, run_dir=tmp_path, log=logs.append)

    assert load_baseline(run(0)) is None and "no centralized baseline" in logs[-1]
    folder = tmp_path / "centralized"

    def write_later():
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"federated": False}))

    timer = threading.Timer(0.5, write_later)
    timer.start()
    try:
        assert load_baseline(run(30)) == {"federated": False}
    finally:
        timer.join()
    assert any("waiting up to 30 s" in line for line in logs)
