"""The federated run's report: ``metrics.json``, ``report.md``, plots and the message audit.

The schema matches the centralized pipeline's ("tstr" / "tsrtr" / "influence" / "timing"),
plus ``"federated": true``, per-site results, participation per phase and round, bytes per
site and message type, and, when a centralized baseline run on the same data and config is
found (``output.baseline``), a federated-vs-centralized comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

from tardiff_common.report.markdown import render_report
from tardiff_common.report.plots import plot_metric_bars, plot_site_bars
from tardiff_common.report.run_folder import to_jsonable, write_bytes_atomic, write_json_atomic

from .phases.generation import pool_site_metrics
from .run import ServerRun

__all__ = ["write_federated_report", "load_baseline"]


def load_baseline(run: ServerRun) -> dict | None:
    """metrics.json of the centralized baseline (relative paths are inside the run folder)."""
    if not run.config.output.baseline:
        return None
    path = Path(run.config.output.baseline)
    path = path if path.is_absolute() else run.run_dir / path
    file = path / "metrics.json"
    if not file.is_file():
        run.log(f"[report] no centralized baseline at {file}; the comparison is left out")
        return None
    return json.loads(file.read_text())


def comparison_rows(federated: dict, baseline: dict | None) -> dict[str, dict]:
    """Site-weighted TSTR of the federated and centralized runs side by side."""
    rows = {f"federated / {m}": s for m, s in federated["tstr"].items()}
    if baseline:
        for m, s in baseline.get("site_weighted", {}).get("tstr", {}).items():
            rows[f"centralized / {m}"] = s
    return rows


def write_federated_report(run: ServerRun) -> dict:
    site_metrics = run.state["site_metrics"]
    pooled = pool_site_metrics(site_metrics)
    baseline = load_baseline(run)
    metrics = {
        "federated": True,
        **pooled,
        "comparison": comparison_rows(pooled, baseline),
        "sites": site_metrics,
        "guidance_records": run.state.get("guidance_records"),
        "participation": run.participation,
        "communication": run.audit.summary(),
        "data": {"source": run.config.data.source, "sites": [s.summary() for s in run.sites.values()]},
        "timing": run.timer.as_dict(),
    }
    figures = ["tstr.png", "sites_auprc.png"]
    plot_metric_bars(pooled["tstr"], run.run_dir / "tstr.png",
                     title="TSTR, site-weighted over the sites' own test splits")
    plot_site_bars({s: m["tstr"] for s, m in site_metrics.items()}, run.run_dir / "sites_auprc.png")
    run.audit.write_jsonl(run.run_dir / "audit.jsonl")
    write_json_atomic(run.run_dir / "config.json", run.config.to_flat())
    write_json_atomic(run.run_dir / "metrics.json", metrics)
    report = render_report(to_jsonable(metrics), title=f"Federated TarDiff run report: {run.run_name}", figures=figures)
    report += _communication_section(metrics["communication"])
    write_bytes_atomic(run.run_dir / "report.md", report.encode())
    return metrics


def _communication_section(comm: dict) -> str:
    lines = ["", "## Communication (site -> server)", "",
             f"{comm['replies']} replies audited, {comm['arrays_checked']} arrays checked, "
             f"{len(comm['violations'])} record-shaped arrays found.", "",
             "| site | message type | messages | bytes |", "|---|---|---|---|"]
    for site, rows in comm["per_site"].items():
        for mtype, row in rows.items():
            lines.append(f"| {site} | {mtype} | {row['messages']} | {row['bytes']:,} |")
    return "\n".join(lines) + "\n"
