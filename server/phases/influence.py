"""Phase 2: the guidance vector G = sum_k G_k and g = G / ||G||.

Each site sums per-example classifier-loss gradients over its guidance split (restricted to
``guidance.target-class`` when set) with the global theta* and returns (G_k, n_k): a vector of the classifier's parameter count and one count,
never per-record gradients. The server adds them and normalizes once.

Privacy options (docs/PRIVACY.md):

* ``privacy.gradient-sum-dp``: each site clips every per-example gradient to C and adds
  N(0, sigma^2 C^2) before sending; the server's arithmetic is unchanged (g is scale-free).
* ``privacy.secure-aggregation``: the sum runs through Flower's SecAgg+ (``server.secagg``),
  so the server learns only sum_k G_k and sum_k n_k, never one site's G_k.
"""

from __future__ import annotations

import torch
from flwr.app import Message, RecordDict

from tardiff_common import protocol as P
from tardiff_common.influence.gradient_sum import GradientSum
from tardiff_common.pipeline.phases import new_classifier
from tardiff_common.serialization import unflatten_metrics

from ..privacy import (
    active_nodes,
    dispatch,
    handle_refusals,
    record_privacy,
    send_private,
    undo_dispatch,
)
from ..run import ServerRun, TooFewSitesError
from ..secagg import fitins_for, public_scale, quantization_bound, secure_sum
from .normalization import normalizer_record

__all__ = ["run_influence_phase"]


def run_influence_phase(run: ServerRun) -> None:
    classifier = run.state["classifier"]
    num_params = sum(p.numel() for p in new_classifier(run.config, run.num_channels, torch.device("cpu")).parameters())
    if run.config.privacy.secure_aggregation:
        G, num_sites = _secure_gradient_sum(run, classifier, num_params)
    else:
        G, num_sites = _plain_gradient_sum(run, classifier, num_params)
    run.state["gradient_sum"] = {P.GRADIENT_SUM_KEY: G.to_numpy()}
    run.state["guidance_records"] = G.count
    run.state["direction"] = {P.DIRECTION_KEY: G.direction().numpy()}
    run.log(f"[influence] G over {G.count} guidance records from {num_sites} sites, ||G|| = {float(G.total.norm()):.4g}")
    run.checkpoint("influence", 0)


def _plain_gradient_sum(run: ServerRun, classifier: dict, num_params: int) -> tuple[GradientSum, int]:
    content = RecordDict({P.CLASSIFIER: P.to_packed_record(classifier), P.NORMALIZER: normalizer_record(run)})
    messages = [Message(content, dst_node_id=n, message_type=P.INFLUENCE, group_id=f"{P.INFLUENCE}-0")
                for n in active_nodes(run)]
    replies = send_private(run, "influence", 0, messages, expected_arrays={P.GRADIENT: {P.GRADIENT_SUM_KEY: (num_params,)}})
    parts = [P.gradient_sum_from_content(reply.content) for reply in replies]
    return GradientSum.sum(parts), len(parts)


def _secure_gradient_sum(run: ServerRun, classifier: dict, num_params: int) -> tuple[GradientSum, int]:
    """SecAgg+ over s * [G_k, n_k] with the public s = 1 / (guidance records of the active sites)."""
    nodes = active_nodes(run)
    scale = public_scale(sum(run.sites[n].counts["guidance"] for n in nodes))
    spent = dispatch(run, "influence", 0, nodes)
    groups = [("classifier", classifier), ("normalizer", run.state["normalizer"])]
    fitins = {n: fitins_for(groups, {"scale": scale, **({P.PRIVACY_SPENT: ",".join(spent[n])} if n in spent else {})})
              for n in nodes}
    try:
        result = secure_sum(run, "influence", fitins)
    except TooFewSitesError:
        handle_refusals(run, "influence", 0)
        raise
    for node in set(nodes) - set(result.node_ids):  # its vector is not in the sum: nothing released
        if node in spent:
            undo_dispatch(run, "influence", 0, node)
    handle_refusals(run, "influence", 0)
    if result.total.shape != (num_params + 1,):
        raise ValueError(f"secure sum has shape {result.total.shape}, expected ({num_params + 1},)")
    record_privacy(run, {n: unflatten_metrics(m) for n, m in result.metrics.items()})
    total = result.total / scale
    count = int(round(float(total[-1])))
    bound = quantization_bound(run.config.privacy, len(result.node_ids)) / scale
    run.state["secagg_quantization_bound"] = float(bound)
    run.log(f"[influence] SecAgg+ sum over {len(result.node_ids)} sites (the server saw only the sum); "
            f"quantization error <= {bound:.3g} per coordinate")
    return GradientSum(torch.as_tensor(total[:-1]), count), len(result.node_ids)
