"""The federated run's report: ``metrics.json``, ``report.md``, plots and the message audit.

The schema matches the centralized pipeline's ("tstr" / "tsrtr" / "influence" / "timing"),
plus ``"federated": true``, per-site results, participation per phase and round
(``participation``: the sites used; ``participation_rounds``: sites asked, used, dropped and why,
retries), the resumes of an interrupted run, bytes per site and message type, and, when a centralized baseline run on the same data and config is
found (``output.baseline``), a federated-vs-centralized comparison.

Privacy: ``"privacy"`` lists epsilon, delta, sigma and C per site and per DP phase plus each
site's total (its own Opacus accountant over everything it released; never summed across
sites), ``"privacy_settings"`` the DP / SecAgg+ configuration, and ``"membership"`` the
distance-to-closest-record attack AUC per synthetic set, pooled over sites by test size.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tardiff_common.metrics.pooling import strip_histograms
from tardiff_common.metrics.summary import weighted_summary
from tardiff_common.pipeline.benchmark import BENCHMARK_NOTE
from tardiff_common.pipeline.evaluation import pool_membership, pool_site_metrics
from tardiff_common.pipeline.external import EXTERNAL, pool_external
from tardiff_common.privacy.report import privacy_settings
from tardiff_common.report.markdown import render_report
from tardiff_common.report.plots import plot_metric_bars, plot_site_bars
from tardiff_common.report.run_folder import to_jsonable, write_bytes_atomic, write_json_atomic

from .privacy import privacy_rows
from .run import ServerRun

__all__ = ["write_federated_report", "load_baseline"]


def load_baseline(run: ServerRun) -> dict | None:
    """metrics.json of the centralized baseline (relative paths are inside the run folder)."""
    if not run.config.output.baseline:
        return None
    path = Path(run.config.output.baseline)
    path = path if path.is_absolute() else run.run_dir / path
    file = path / "metrics.json"
    deadline = time.monotonic() + float(run.config.output.baseline_wait)
    if not file.is_file() and run.config.output.baseline_wait > 0:
        run.log(f"[report] waiting up to {run.config.output.baseline_wait:g} s for the centralized baseline at {file}")
        while not file.is_file() and time.monotonic() < deadline:  # written atomically (whole run folder at once)
            time.sleep(1.0)
    if not file.is_file():
        run.log(f"[report] no centralized baseline at {file}; the comparison is left out")
        return None
    return json.loads(file.read_text())


def _tsrtr_at_largest_ratio(tsrtr: dict | None) -> dict[str, dict]:
    """{method: summary} of TSRTR at the largest synthetic:real ratio evaluated."""
    out = {}
    for method, by_ratio in (tsrtr or {}).items():
        if by_ratio:
            ratio = max(by_ratio, key=float)
            out[f"real + {method} x{float(ratio):g}"] = by_ratio[ratio]
    return out


def comparison_rows(federated: dict, baseline: dict | None) -> dict[str, dict]:
    """Site-weighted TSTR (and TSRTR at the largest ratio) of the federated and centralized runs
    side by side: ``{"<run> / <method>": {"auroc", "auprc", "minority_f1", ...}}``."""
    rows = {f"federated / {m}": s for m, s in federated["tstr"].items()}
    rows.update({f"federated / {m}": s for m, s in _tsrtr_at_largest_ratio(federated.get("tsrtr")).items()})
    if baseline:
        weighted = baseline.get("site_weighted", {})
        rows.update({f"centralized / {m}": s for m, s in weighted.get("tstr", {}).items()})
        rows.update({f"centralized / {m}": s for m, s in _tsrtr_at_largest_ratio(weighted.get("tsrtr")).items()})
    return rows


EXTERNAL_COHORT_NOTE = "per site: each site's own node-config external-path (paths stay at the sites)"


def split_site_extras(site_metrics: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
    """(per-site evaluation metrics, {site: its external-cohort result}, {site: its gradient-boosting
    rows}): the last two come from the generation reply and have their own sections."""
    core, external, gbm = {}, {}, {}
    for name, metrics in site_metrics.items():
        core[name] = {k: v for k, v in metrics.items() if k not in (EXTERNAL, "baselines")}
        if metrics.get(EXTERNAL):
            external[name] = metrics[EXTERNAL]
        rows = (metrics.get("baselines") or {}).get("gbm") or {}
        if rows.get("site"):
            gbm[name] = rows["site"]
    return core, external, gbm


def federated_baselines(core: dict[str, dict], gbm: dict[str, dict], external: dict | None) -> dict:
    """``metrics["baselines"]``: gradient boosting on each site's own splits, per site and
    site-weighted by test size (beside the site-weighted real-only row), and on the external cohorts."""
    rows: dict[str, dict] = {}
    if gbm:
        names = sorted(gbm)
        rows["site_weighted"] = weighted_summary([gbm[n] for n in names], [float(core[n]["test_size"]) for n in names])
        rows.update({n: gbm[n] for n in names})
    if external and (external.get("baselines") or {}).get("gbm"):
        rows[EXTERNAL] = external["baselines"]["gbm"]
    return {"gbm": rows, "note": BENCHMARK_NOTE + "; trained at each site on its own splits"}


def write_federated_report(run: ServerRun) -> dict:
    site_metrics, site_external, site_gbm = split_site_extras(run.state["site_metrics"])
    pooled = pool_site_metrics(site_metrics)
    external = pool_external(site_external, path=EXTERNAL_COHORT_NOTE) if site_external else None
    baseline = load_baseline(run)
    metrics = {
        "federated": True,
        **pooled,
        "comparison": comparison_rows(pooled, baseline),
        "selection": run.state.get("selection"),
        "sites": strip_histograms(site_metrics),
        "guidance_records": run.state.get("guidance_records"),
        "participation": run.participation,
        "participation_rounds": run.rounds,
        "resumes": run.resumes,
        "communication": run.audit.summary(),
        "data": {"source": run.config.data.source, "sites": [s.summary() for _, s in sorted(run.registered.items())]},
        "timing": run.timer.as_dict(),
        "timing_cpu": run.timer.cpu_dict(),  # this process only: the ServerApp, or every site in-process
        "privacy": privacy_rows(run, site_metrics),
        "privacy_settings": _privacy_settings(run),
        "membership": pool_membership(site_metrics),
        "baselines": federated_baselines(site_metrics, site_gbm, external),
        **({EXTERNAL: external} if external is not None else {}),
    }
    figures = ["tstr.png", "sites_auprc.png"]
    plot_metric_bars(pooled["tstr"], run.run_dir / "tstr.png",
                     title="TSTR, site-weighted over the sites' own test splits")
    plot_site_bars({s: m["tstr"] for s, m in site_metrics.items()}, run.run_dir / "sites_auprc.png")
    run.audit.write_jsonl(run.run_dir / "audit.jsonl")
    write_json_atomic(run.run_dir / "config.json", run.config.to_flat())
    write_json_atomic(run.run_dir / "metrics.json", metrics)
    report = render_report(to_jsonable(metrics), title=f"Federated TarDiff run report: {run.run_name}", figures=figures)
    report += _privacy_section(metrics)
    report += _participation_section(metrics)
    report += _communication_section(metrics["communication"])
    write_bytes_atomic(run.run_dir / "report.md", report.encode())
    return metrics


def _participation_section(metrics: dict) -> str:
    """Phase x round -> the sites whose replies were used; the sites dropped and why; resumes."""
    lines = ["", "## Participation", "",
             "Which sites' replies each round used (a site asked but not used was dropped: the reason is "
             "its error reply, a timeout, or a privacy-budget refusal).", "",
             "| phase | round | message | sites used | dropped (why) | retries |", "|---|---|---|---|---|---|"]
    for row in metrics.get("participation_rounds", []):
        dropped = "; ".join(f"{site}: {why}" for site, why in row.get("dropped", {}).items()) or "-"
        lines.append(f"| {row['phase']} | {row['round']} | {row.get('message', '')} | {', '.join(row['sites']) or '-'} | "
                     f"{dropped.replace('|', '/')} | {row.get('retries', 0)} |")
    for i, resume in enumerate(metrics.get("resumes", []), 1):
        lines.append("")
        lines.append(f"Resumed ({i}) after {resume.get('phase')} round {resume.get('round')} "
                     f"(finished phases: {', '.join(resume.get('completed', [])) or 'none'}); "
                     f"it had stopped with: {resume.get('stopped_with') or 'no recorded failure'}.")
    return "\n".join(lines) + "\n"


def _communication_section(comm: dict) -> str:
    lines = ["", "## Communication (site -> server)", "",
             f"{comm['replies']} replies audited, {comm['arrays_checked']} arrays checked, "
             f"{len(comm['violations'])} record-shaped arrays found.", "",
             "| site | message type | messages | bytes |", "|---|---|---|---|"]
    for site, rows in comm["per_site"].items():
        for mtype, row in rows.items():
            lines.append(f"| {site} | {mtype} | {row['messages']} | {row['bytes']:,} |")
    return "\n".join(lines) + "\n"


def _privacy_settings(run: ServerRun) -> dict:
    out = privacy_settings(run.config.privacy, run.state.get("privacy_excluded", []))
    if run.config.privacy.secure_aggregation:
        out["secagg_quantization_bound"] = run.state.get("secagg_quantization_bound")
    return out


def _privacy_section(metrics: dict) -> str:
    settings = metrics.get("privacy_settings", {})
    lines = ["", "## Privacy settings", ""]
    on = [k for k in ("gradient_sum_dp", "dp_sgd_classifier", "dp_sgd_diffusion") if settings.get(k)]
    if on:
        lines.append(f"Differential privacy: {', '.join(on)}; accountant `{settings.get('accountant')}`, "
                     f"delta = {settings.get('delta')}; epsilon is per site (never added across sites), "
                     f"composed over everything the site released under DP; `total` = all its DP phases "
                     f"together. A phase without DP shows epsilon = inf (sigma 0): the records it uses (e.g. "
                     f"the training split when DP-SGD is off) are not protected by the total.")
        if settings.get("dp_score_counts"):
            lines.append("Phases 3b and 4 release only noised score counts (Gaussian mechanism, sensitivity "
                         "sqrt(K) for K histograms: rows `selection` and `evaluation`, C = sqrt(K)); AUROC / AUPRC "
                         "are computed from them. Withheld under DP (n/a): "
                         + ", ".join(settings.get("withheld_under_dp", [])) + ".")
        if settings.get("max_epsilon") is not None:
            lines.append(f"Budget: privacy.max-epsilon = {settings['max_epsilon']} per site, "
                         f"on exceeding: {settings.get('on_budget_exceeded')}; "
                         f"sites dropped: {settings.get('excluded_sites') or 'none'}.")
    else:
        lines.append("Differential privacy: off (epsilon = inf for every site).")
    if settings.get("secure_aggregation"):
        lines.append(f"Secure aggregation (Flower SecAgg+) of the gradient sums: {settings.get('secagg_num_shares')} "
                     f"shares, reconstruction threshold {settings.get('secagg_reconstruction_threshold')}, "
                     f"clipping range {settings.get('secagg_clipping_range')}, quantization range "
                     f"{settings.get('secagg_quantization_range')}; quantization error of G <= "
                     f"{settings.get('secagg_quantization_bound')} per coordinate.")
    else:
        lines.append("Secure aggregation: off (the server sees each site's G_k).")
    membership = metrics.get("membership") or {}
    if membership:
        lines += ["", "Membership inference (distance to the closest synthetic record, at each site: its "
                  "training records vs its test records; 0.5 = no leak):", "",
                  "| synthetic set | MIA AUC (site-weighted) | sites |", "|---|---|---|"]
        for name, row in membership.items():
            auc = row.get("mia_auc")
            lines.append(f"| {name} | {'n/a' if auc is None or not np.isfinite(auc) else f'{auc:.3f}'} | "
                         f"{row.get('sites')} |")
    return "\n".join(lines) + "\n"
