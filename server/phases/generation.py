"""Phase 4: generation and evaluation at the sites; metrics only come back.

The server broadcasts the EMA U-Net, theta*, g and the normalizer; each site samples a guided
("tardiff") and an unguided set of ``generation.ratio`` x its training size, keeps them on its
own disk, trains downstream classifiers on them (TSTR) and on its real records (+ synthetic,
TSRTR), scores them on its own test split and returns the scores. The server pools the
per-seed scores weighted by test-split size (``weighted_summary``). The U-Net and classifier
travel packed (``tardiff_common.protocol``); with DP the message also lists the DP operations
dispatched to the site (``protocol.PRIVACY_SPENT``), for a site whose ledger was lost.
"""

from __future__ import annotations

import numpy as np

from tardiff_common import protocol as P
from tardiff_common.metrics.histogram_auc import SCORE_BINS
from tardiff_common.metrics.paired import paired_tables
from tardiff_common.metrics.pooling import pooled_summary
from tardiff_common.metrics.summary import weighted_summary

from ..privacy import DISPATCHED, dp_phase, spent_content
from ..run import ServerRun
from .selection import generator_content

__all__ = ["run_generation_phase", "pool_site_metrics"]


def run_generation_phase(run: ServerRun) -> None:
    chosen = run.state["selection"]["chosen"]
    content = generator_content(run, {"run-name": run.run_name, "guidance-form": chosen["form"],
                                      "guidance-scale": float(chosen["scale"])})
    dp_on = any(dp_phase(run, phase) for phase in ("classifier", "influence", "diffusion"))
    spent = run.state.get(DISPATCHED, {})
    replies = run.query("generation", P.GENERATE,
                        lambda n: spent_content(content, spent.get(run.sites[n].name, []) if dp_on else None))
    site_metrics = {}
    for reply in replies:  # in site-name order
        site = run.site_of(reply)
        site_metrics[site.name] = P.from_metric_record(reply.content[P.METRICS])
    run.state["site_metrics"] = site_metrics
    run.log(f"[generation] {len(site_metrics)} sites sampled and evaluated locally: " + ", ".join(
        f"{name} TSTR AUROC tardiff {m['tstr']['tardiff']['auroc']:.3f} / unguided {m['tstr']['unguided']['auroc']:.3f}"
        for name, m in site_metrics.items()))


def pool_site_metrics(site_metrics: dict[str, dict]) -> dict:
    """Site-weighted (by test size) TSTR / TSRTR summaries and their paired differences, theta*'s
    scores, mean influence and fidelity scores (sites where a score is undefined are left out of
    its average), and the histogram-pooled AUROC / AUPRC (``metrics.pooling``) with their paired
    differences."""
    names = sorted(site_metrics)
    weights = [float(site_metrics[n]["test_size"]) for n in names]
    first = site_metrics[names[0]]
    tstr = {m: weighted_summary([site_metrics[n]["tstr"][m] for n in names], weights) for m in first["tstr"]}
    tsrtr = {
        m: {r: weighted_summary([site_metrics[n]["tsrtr"][m][r] for n in names], weights) for r in ratios}
        for m, ratios in first["tsrtr"].items()
    }
    global_scores = {}
    for key in first["global_classifier"]:
        vals = np.array([site_metrics[n]["global_classifier"][key] for n in names], dtype=float)
        w = np.asarray(weights) * np.isfinite(vals)
        global_scores[key] = float(np.nansum(vals * w) / w.sum()) if w.sum() else float("nan")
    influence = {
        k: float(np.average([site_metrics[n]["influence"][k] for n in names], weights=weights))
        for k in first["influence"]
    }
    fidelity = {}
    for set_name in first.get("fidelity", {}):
        keys = first["fidelity"][set_name]
        fidelity[set_name] = {}
        for key in keys:
            vals = np.array([site_metrics[n].get("fidelity", {}).get(set_name, {}).get(key, np.nan) for n in names],
                            dtype=float)
            w = np.asarray(weights) * np.isfinite(vals)
            fidelity[set_name][key] = float(np.nansum(vals * w) / w.sum()) if w.sum() else float("nan")
    pooled_tstr = {m: pooled_summary([site_metrics[n]["tstr"][m] for n in names], SCORE_BINS) for m in first["tstr"]}
    pooled_tsrtr = {
        m: {r: pooled_summary([site_metrics[n]["tsrtr"][m][r] for n in names], SCORE_BINS) for r in ratios}
        for m, ratios in first["tsrtr"].items()
    }
    return {"tstr": tstr, "tsrtr": tsrtr, "global_classifier": global_scores, "influence": influence,
            "fidelity": fidelity, "paired": paired_tables(tstr, tsrtr),
            "histogram_pooled": {"tstr": pooled_tstr, "tsrtr": pooled_tsrtr,
                                 "paired": paired_tables(pooled_tstr, pooled_tsrtr)}}
