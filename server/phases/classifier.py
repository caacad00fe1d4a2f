"""Phase 1: FedAvg (or FedProx) of the downstream classifier f_theta for ``classifier-rounds``.

The server initializes f_theta with the run seed (the same weights the centralized pipeline
starts from), each round every site trains ``classifier-train.epochs`` local epochs from the
global weights, and Flower's strategy averages the replies weighted by training records
(in site-name order). The weights travel packed (``client.protocol``: one flat vector + index).
With ``privacy.dp-sgd-classifier`` the local epochs are DP-SGD at each site; sites over their
privacy budget refuse and are handled by ``server.privacy`` (stop, or drop the site).
A resumed run continues after the last checkpointed round from the saved global weights.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord

from client import protocol as P
from tardiff_common.pipeline.phases import new_classifier
from tardiff_common.privacy.plan import validate_privacy_run
from tardiff_common.serialization import module_to_numpy

from ..privacy import active_nodes, send_private
from ..run import ServerRun
from ..strategies import phase_strategy
from .normalization import normalizer_record

__all__ = ["run_classifier_phase", "global_pos_weight"]


def global_pos_weight(run: ServerRun) -> float:
    """n_neg / n_pos over all sites' training splits for "balanced" weighting, else 1."""
    if run.config.classifier_train.class_weighting != "balanced":
        return 1.0
    pos, total = run.state["train_positives"], run.state["train_records"]
    return (total - pos) / pos


def run_classifier_phase(run: ServerRun) -> None:
    cfg = run.config
    validate_privacy_run(cfg)
    layout = module_to_numpy(new_classifier(cfg, run.num_channels, torch.device("cpu")))
    index = P.PackIndex.of(layout)
    start = run.resume_round("classifier")
    weights = run.state["classifier"] if start else layout
    if start:
        run.log(f"[classifier] resuming after round {start}/{cfg.federation.classifier_rounds}")
    expected = {P.ARRAYS: index.expected()}
    strategy = phase_strategy(P.TRAIN_CLASSIFIER, strategy=cfg.federation.strategy, num_sites=len(run.sites),
                              proximal_mu=cfg.federation.proximal_mu,
                              extra_records={P.NORMALIZER: normalizer_record(run)})
    pos_weight = global_pos_weight(run)
    for r in range(start + 1, cfg.federation.classifier_rounds + 1):
        messages = strategy.train_messages(r, P.to_packed_record(weights, index),
                                           ConfigRecord({"pos-weight": pos_weight}), active_nodes(run))
        replies = send_private(run, "classifier", r, messages, expected_arrays=expected)
        aggregated, metrics = strategy.aggregate_train(r, replies)
        weights = P.unpack_record(aggregated, index)
        run.state["classifier"] = weights
        run.log(f"[classifier] round {r}/{cfg.federation.classifier_rounds}: "
                f"{len(replies)} sites, loss {float(metrics['loss']):.4f}")
        run.checkpoint("classifier", r)
