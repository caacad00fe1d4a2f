"""Phase 4: generation and evaluation at the sites; metrics only come back.

The server broadcasts the EMA U-Net, theta*, g and the normalizer; each site samples a guided
("tardiff") and an unguided set of ``generation.ratio`` x its training size, keeps them on its
own disk, trains downstream classifiers on them (TSTR) and on its real records (+ synthetic,
TSRTR), scores them on its own test split and returns the scores. The server pools the
per-seed scores weighted by test-split size (``pipeline.evaluation.pool_site_metrics``). The
U-Net and classifier travel packed (``tardiff_common.protocol``); with DP the message also lists the DP operations
dispatched to the site (``protocol.PRIVACY_SPENT``), for a site whose ledger was lost, and the
reply is the DP release "evaluation:1" (``tardiff_common.privacy.dp_scores.release_site_metrics``:
TSTR counts only, noised, per-site AUROC / AUPRC from them; the real-only and TSRTR rows -- trained
on raw training records without DP-SGD -- are not computed, F1, theta*'s scores, fidelity and the
membership attack withheld).
"""

from __future__ import annotations

from tardiff_common import protocol as P

from ..privacy import query_private
from ..run import ServerRun
from .selection import generator_content

__all__ = ["run_generation_phase"]


def run_generation_phase(run: ServerRun) -> None:
    chosen = run.state["selection"]["chosen"]
    content = generator_content(run, {"run-name": run.run_name, "guidance-form": chosen["form"],
                                      "guidance-scale": float(chosen["scale"])})
    replies = query_private(run, "generation", "evaluation", P.GENERATE, content)
    site_metrics = {}
    for reply in replies:  # in site-name order
        site = run.site_of(reply)
        site_metrics[site.name] = P.from_metric_record(reply.content[P.METRICS])
    run.state["site_metrics"] = site_metrics
    run.log(f"[generation] {len(site_metrics)} sites sampled and evaluated locally: " + ", ".join(
        f"{name} TSTR AUROC tardiff {m['tstr']['tardiff']['auroc']:.3f} / unguided {m['tstr']['unguided']['auroc']:.3f}"
        for name, m in site_metrics.items()))
