"""Phase 3b: choose the guidance setting on the sites' tuning splits (``guidance.scale = "auto"``).

The server broadcasts what phase 4 will use (EMA U-Net, theta*, g, normalizer); every site
samples each candidate of ``guidance.candidates`` (s = 0, unguided, always among them), trains
the evaluation classifier on its training split + the candidate set (TSRTR) and on the set
alone (TSTR) with the run's evaluation seeds, and answers with the counts of the predicted
scores on its tuning split by label ([2, bins] per seed: metrics, never a record). The server
adds the counts over sites, computes the pooled tuning AUPRC per candidate and picks the best
one if it beats unguided by more than a second unguided draw differs from the first
(``tardiff_common.pipeline.selection``); phase 4 generates with it. With DP on the counts come
noised (``tardiff_common.privacy.dp_scores``; the noise widens the null row's gap too, so the
rule stays the same), TSTR only (a TSRTR classifier trains on the raw training split), and the
choice is made on TSTR; the release is one DP operation "selection:1" in the dispatch log. With a numeric scale the
phase only records the fixed setting and sends nothing.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from tardiff_common import protocol as P
from tardiff_common.metrics.histogram_auc import SCORE_BINS
from tardiff_common.pipeline.selection import (
    fixed_selection,
    scored_modes,
    selection_from_scores,
    selection_record,
    tuning_rows,
)

from ..privacy import query_private
from ..run import ServerRun
from .normalization import normalizer_record

__all__ = ["run_selection_phase", "generator_content"]


def generator_content(run: ServerRun, config: dict | None = None) -> RecordDict:
    """The broadcast of phases 3b and 4: EMA U-Net, theta*, g, normalizer (+ a config record)."""
    unet = run.state["unet"]
    _, ema = P.split_diffusion_arrays(unet)
    return RecordDict({
        P.ARRAYS: P.to_packed_record(ema),
        P.CLASSIFIER: P.to_packed_record(run.state["classifier"]),
        P.DIRECTION: P.to_array_record(run.state["direction"]),
        P.NORMALIZER: normalizer_record(run),
        P.CONFIG: ConfigRecord(config or {}),
    })


def dp_variance(replies) -> float:
    """The pooled DP noise variance per coarse cell of the noised tuning counts: sum over sites of
    sigma_k^2 x clip_k^2 (clip = sqrt(K_k), from each reply's privacy report); 0 without DP."""
    total = 0.0
    for reply in replies:
        report = P.from_metric_record(reply.content[P.METRICS]).get("privacy", {})
        release = report.get("selection") if isinstance(report, dict) else None
        if isinstance(release, dict):
            total += float(release["sigma"]) ** 2 * float(release["clip"]) ** 2
    return total


def run_selection_phase(run: ServerRun) -> None:
    g = run.config.guidance
    if not g.auto:
        fixed = fixed_selection(run.config)
        run.state["selection"] = selection_record(fixed)
        run.log(f"[selection] {fixed['summary']}")
        return
    rows = tuning_rows(run.config)
    replies = query_private(run, "selection", "selection", P.TUNE, generator_content(run))
    seeds = len(g.tuning_seeds)
    scores = [P.decode_candidate_scores(reply.content[P.METRICS], rows, seeds, SCORE_BINS,
                                        scored_modes(run.config)) for reply in replies]
    selection = selection_from_scores(scores, run.config, dp_variance=dp_variance(replies))
    run.state["selection"] = selection_record(selection)
    run.log(f"[selection] {len(replies)} sites scored {len(rows) - 1} candidates and a null draw on their tuning splits; "
            + selection["summary"])
