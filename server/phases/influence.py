"""Phase 2: the guidance vector G = sum_k G_k and g = G / ||G||.

Each site sums per-example classifier-loss gradients over its guidance split (restricted to
``guidance.target-class`` when set) with the global theta* and returns (G_k, n_k): a vector of the classifier's parameter count and one count,
never per-record gradients. The server adds them and normalizes once.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import RecordDict

from client import protocol as P
from tardiff_common.influence.gradient_sum import GradientSum
from tardiff_common.pipeline.phases import new_classifier

from ..run import ServerRun
from .normalization import normalizer_record

__all__ = ["run_influence_phase"]


def run_influence_phase(run: ServerRun) -> None:
    classifier = run.state["classifier"]
    channels = len(next(iter(run.sites.values())).channels)
    num_params = sum(p.numel() for p in new_classifier(run.config, channels, torch.device("cpu")).parameters())
    content = RecordDict({P.CLASSIFIER: P.to_array_record(classifier), P.NORMALIZER: normalizer_record(run)})
    replies = run.query("influence", P.INFLUENCE, content, expected_arrays={P.GRADIENT: {"sum": (num_params,)}})
    parts = []
    for reply in replies:
        total = P.from_array_record(reply.content[P.GRADIENT])["sum"]
        parts.append(GradientSum(torch.as_tensor(np.asarray(total, dtype=np.float64)),
                                 int(reply.content[P.METRICS]["count"])))
    G = GradientSum.sum(parts)
    run.state["gradient_sum"] = {"sum": G.to_numpy()}
    run.state["guidance_records"] = G.count
    run.state["direction"] = {"g": G.direction().numpy()}
    run.log(f"[influence] G over {G.count} guidance records from {len(parts)} sites, ||G|| = {float(G.total.norm()):.4g}")
    run.checkpoint("influence", 0)
